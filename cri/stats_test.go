package cri_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/testmodule"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// runContainer pulls the hello module and runs it with args in a new pod.
func (c clients) runContainer(t *testing.T, pod string, resources *runtimeapi.LinuxContainerResources, args ...string) (sandboxID, containerID string) {
	t.Helper()
	ctx := context.Background()
	ref := c.push(t, "hello", testmodule.Hello(t))
	if _, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Fatal(err)
	}
	sb, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig(pod, map[string]string{"pod": pod})})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
		Image:    &runtimeapi.ImageSpec{Image: ref},
		Args:     args,
		LogPath:  "main.log",
		Labels:   map[string]string{"app": pod},
	}
	if resources != nil {
		cfg.Linux = &runtimeapi.LinuxContainerConfig{Resources: resources}
	}
	ctr, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatal(err)
	}
	return sb.PodSandboxId, ctr.ContainerId
}

func TestExecSyncForProbes(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	_, id := c.runContainer(t, "probe", nil, "sleep-forever")

	r, err := c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"probe", "exit", "0"}, Timeout: 5})
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("healthy probe: %v %v", r, err)
	}
	r, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"probe", "exit", "1"}, Timeout: 5})
	if err != nil || r.ExitCode != 1 || !strings.Contains(string(r.Stderr), "exiting with 1") {
		t.Fatalf("failing probe: %v %v", r, err)
	}
	r, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"probe", "hello"}})
	if err != nil || !strings.Contains(string(r.Stdout), `args: ["probe" "hello"]`) {
		t.Fatalf("probe output: %v %v", r, err)
	}
	start := time.Now()
	_, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"probe", "sleep-forever"}, Timeout: 1})
	wantCode(t, "probe past its timeout", err, codes.DeadlineExceeded)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("a 1s probe took %v", took)
	}
	_, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id})
	wantCode(t, "empty command", err, codes.InvalidArgument)
	ex, err := c.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: id, Cmd: []string{"x"}, Stdout: true})
	if err != nil || !strings.HasPrefix(ex.Url, "http://127.0.0.1:") {
		t.Fatalf("Exec URL: %v %v", ex, err)
	}
	_, err = c.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: "deadbeef", Stdout: true})
	wantCode(t, "attach to unknown", err, codes.NotFound)
}

func TestStatsResourcesAndRuntimeConfig(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	sb, id := c.runContainer(t, "busy", &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 512 << 20}, "spin")
	time.Sleep(300 * time.Millisecond)

	first, err := c.rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	st, err := c.rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		t.Fatal(err)
	}
	s := st.Stats
	if s.Attributes.Id != id || s.Cpu.UsageCoreNanoSeconds.Value <= first.Stats.Cpu.UsageCoreNanoSeconds.Value ||
		s.Cpu.UsageNanoCores.Value == 0 || s.Memory.WorkingSetBytes.Value == 0 ||
		s.Memory.AvailableBytes.Value == 0 || s.WritableLayer.FsId.Mountpoint == "" {
		t.Errorf("stats of a spinning container: %v", s)
	}
	list, err := c.rt.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{Filter: &runtimeapi.ContainerStatsFilter{LabelSelector: map[string]string{"app": "busy"}}})
	if err != nil || len(list.Stats) != 1 {
		t.Fatalf("ListContainerStats: %v %v", list, err)
	}
	ps, err := c.rt.PodSandboxStats(ctx, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: sb})
	if err != nil || len(ps.Stats.Linux.Containers) != 1 || ps.Stats.Linux.Process.ProcessCount.Value != 1 || ps.Stats.Linux.Cpu.UsageCoreNanoSeconds.Value == 0 {
		t.Fatalf("PodSandboxStats: %v %v", ps, err)
	}
	lps, err := c.rt.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{Filter: &runtimeapi.PodSandboxStatsFilter{Id: sb}})
	if err != nil || len(lps.Stats) != 1 {
		t.Fatalf("ListPodSandboxStats: %v %v", lps, err)
	}
	desc, err := c.rt.ListMetricDescriptors(ctx, &runtimeapi.ListMetricDescriptorsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	described := map[string]bool{}
	for _, d := range desc.Descriptors {
		described[d.Name] = true
	}
	metrics, err := c.rt.ListPodSandboxMetrics(ctx, &runtimeapi.ListPodSandboxMetricsRequest{})
	if err != nil || len(metrics.PodMetrics) != 1 || len(metrics.PodMetrics[0].ContainerMetrics) != 1 {
		t.Fatalf("ListPodSandboxMetrics: %v %v", metrics, err)
	}
	for _, m := range metrics.PodMetrics[0].ContainerMetrics[0].Metrics {
		if !described[m.Name] {
			t.Errorf("metric %s is not described", m.Name)
		}
	}

	if _, err := c.rt.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: id,
		Linux: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 256 << 20, CpuQuota: 50000, CpuPeriod: 100000}}); err != nil {
		t.Fatal(err)
	}
	cs, _ := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if l := cs.Status.Resources.GetLinux(); l.MemoryLimitInBytes != 256<<20 || l.CpuQuota != 50000 {
		t.Errorf("resources after update: %v", l)
	}
	if _, err := c.rt.ReopenContainerLog(ctx, &runtimeapi.ReopenContainerLogRequest{ContainerId: id}); err != nil {
		t.Errorf("ReopenContainerLog: %v", err)
	}

	rc, err := c.rt.RuntimeConfig(ctx, &runtimeapi.RuntimeConfigRequest{})
	if err != nil || rc.Linux.CgroupDriver != runtimeapi.CgroupDriver_CGROUPFS {
		t.Errorf("RuntimeConfig: %v %v", rc, err)
	}
	if _, err := c.rt.UpdateRuntimeConfig(ctx, &runtimeapi.UpdateRuntimeConfigRequest{RuntimeConfig: &runtimeapi.RuntimeConfig{NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: "10.0.0.0/24"}}}); err != nil {
		t.Errorf("UpdateRuntimeConfig: %v", err)
	}
}

func TestContainerEvents(t *testing.T) {
	c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.rt.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, id := c.runContainer(t, "evented", nil, "exit", "0")
	var got []runtimeapi.ContainerEventType
	for len(got) < 3 {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.ContainerId != id {
			continue
		}
		got = append(got, ev.ContainerEventType)
		if ev.PodSandboxStatus == nil || len(ev.ContainersStatuses) != 1 || ev.CreatedAt == 0 {
			t.Errorf("event lacks statuses: %v", ev)
		}
	}
	if _, err := c.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, ev.ContainerEventType)
	want := []runtimeapi.ContainerEventType{
		runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT,
		runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT,
		runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT,
		runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT,
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events = %v, want %v", got, want)
		}
	}
}
