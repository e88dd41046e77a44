package cri_test

import (
	"context"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestStatsResourcesAndRuntimeConfig(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	sb, id := c.runContainer(t, "busy", &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 512 << 20}, "spin")

	// A spinning container's CPU time moves, and with it the rate since the
	// previous call, however little of the machine it gets: polled until
	// both show it.
	stats := func() *runtimeapi.ContainerStats {
		t.Helper()
		r, err := c.rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: id})
		if err != nil {
			t.Fatal(err)
		}
		return r.Stats
	}
	first := stats()
	s := first
	for deadline := time.Now().Add(30 * time.Second); s.Cpu.UsageCoreNanoSeconds.Value <= first.Cpu.UsageCoreNanoSeconds.Value || s.Cpu.UsageNanoCores.Value == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("a spinning container's CPU did not move: %v then %v", first, s)
		}
		time.Sleep(10 * time.Millisecond)
		s = stats()
	}
	if s.Attributes.Id != id || s.Memory.WorkingSetBytes.Value == 0 ||
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
