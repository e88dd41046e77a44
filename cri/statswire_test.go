package cri

import (
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/sandbox"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The stats written straight to the wire decode to the messages the CRI
// calls answered with before, built here from the same figures: zeros
// included, lengths of one byte and of more, with and without a memory
// limit, for a container and for a sandbox of several or none (whose
// timestamps are 0).
func TestStatsWire(t *testing.T) {
	at := time.Unix(1_700_000_000, 123)
	long := strings.Repeat("x", 300) // lengths past one byte of varint
	containers := []*sandbox.Container{
		{ID: "c0", SandboxID: "pod", Config: &runtimeapi.ContainerConfig{}},
		{ID: "c1", SandboxID: "pod", Config: &runtimeapi.ContainerConfig{
			Metadata:    &runtimeapi.ContainerMetadata{Name: "main", Attempt: 3},
			Labels:      map[string]string{"app": "web", "long": long},
			Annotations: map[string]string{"note": "n"},
		}},
		{ID: "c2", SandboxID: "pod", Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "side"}}},
	}
	containers[1].State = sandbox.ContainerRunning
	containers[1].Resources.MemoryLimitBytes = 64 << 20
	containers[2].Resources.MemoryLimitBytes = 1 << 20 // below its use: nothing available
	stats := []*sandbox.Stats{
		{Timestamp: at}, // every figure 0
		{Timestamp: at, CPU: 3 * time.Second, NanoCores: 250_000_000, MemoryBytes: 24 << 20,
			WritableBytes: 4096, WritableInodes: 7, LogBytes: 1 << 40, RootDir: "/var/lib/wasmcri/containers/" + long},
		{Timestamp: at.Add(time.Second), CPU: 1, MemoryBytes: 2 << 20, RootDir: "/r"},
	}

	for i, c := range containers {
		attrs, err := containerAttributes(c)
		if err != nil {
			t.Fatal(err)
		}
		got := &runtimeapi.ContainerStatsResponse{}
		decode(t, appendContainerStats(nil, containerStatsField, attrs, c, stats[i]), got)
		if want := wantContainerStats(c, stats[i]); !proto.Equal(got.Stats, want) {
			t.Errorf("container %d:\n got %v\nwant %v", i, got.Stats, want)
		}
	}

	sb := &sandbox.Sandbox{ID: "pod", Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "ns", Uid: "u"}, Labels: map[string]string{"long": long}}}
	attrs, err := sandboxAttributes(sb)
	if err != nil {
		t.Fatal(err)
	}
	sums := &podSums{}
	for i, c := range containers {
		cattrs, _ := containerAttributes(c)
		sums.add(c, stats[i])
		sums.containers = appendContainerStats(sums.containers, linuxContainers, cattrs, c, stats[i])
	}
	for name, tc := range map[string]struct {
		sums *podSums
		n    int
	}{"three containers": {sums, 3}, "none": {nil, 0}} {
		got := &runtimeapi.PodSandboxStatsResponse{}
		decode(t, appendPodStats(nil, podStatsField, attrs, tc.sums), got)
		if want := wantPodStats(sb, containers[:tc.n], stats[:tc.n]); !proto.Equal(got.Stats, want) {
			t.Errorf("sandbox, %s:\n got %v\nwant %v", name, got.Stats, want)
		}
	}
}

func decode(t *testing.T, wire []byte, into proto.Message) {
	t.Helper()
	if err := proto.Unmarshal(wire, into); err != nil {
		t.Fatalf("%T does not decode: %v", into, err)
	}
}

func u64(v uint64) *runtimeapi.UInt64Value { return &runtimeapi.UInt64Value{Value: v} }

// wantContainerStats is a container's stats as CRI messages.
func wantContainerStats(c *sandbox.Container, st *sandbox.Stats) *runtimeapi.ContainerStats {
	ts, mem := st.Timestamp.UnixNano(), uint64(st.MemoryBytes)
	memory := &runtimeapi.MemoryUsage{Timestamp: ts, WorkingSetBytes: u64(mem), UsageBytes: u64(mem), RssBytes: u64(mem)}
	if limit := c.Resources.MemoryLimitBytes; limit > 0 {
		memory.AvailableBytes = u64(uint64(max(limit-st.MemoryBytes, 0)))
	}
	return &runtimeapi.ContainerStats{
		Attributes: &runtimeapi.ContainerAttributes{Id: c.ID, Metadata: c.Config.GetMetadata(), Labels: c.Config.GetLabels(), Annotations: c.Config.GetAnnotations()},
		Cpu:        &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: u64(uint64(st.CPU)), UsageNanoCores: u64(st.NanoCores)},
		Memory:     memory,
		WritableLayer: &runtimeapi.FilesystemUsage{Timestamp: ts, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: st.RootDir},
			UsedBytes: u64(st.WritableBytes + st.LogBytes), InodesUsed: u64(st.WritableInodes)},
	}
}

// wantPodStats is a sandbox's stats as CRI messages: its containers' sums
// and each container's.
func wantPodStats(sb *sandbox.Sandbox, containers []*sandbox.Container, stats []*sandbox.Stats) *runtimeapi.PodSandboxStats {
	linux := &runtimeapi.LinuxPodSandboxStats{}
	var cpu, nanoCores, mem, running uint64
	var ts int64
	for i, c := range containers {
		st := wantContainerStats(c, stats[i])
		linux.Containers = append(linux.Containers, st)
		cpu += st.Cpu.UsageCoreNanoSeconds.Value
		nanoCores += st.Cpu.UsageNanoCores.Value
		mem += st.Memory.WorkingSetBytes.Value
		ts = max(ts, st.Cpu.Timestamp)
		if c.State == sandbox.ContainerRunning {
			running++
		}
	}
	linux.Cpu = &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: u64(cpu), UsageNanoCores: u64(nanoCores)}
	linux.Memory = &runtimeapi.MemoryUsage{Timestamp: ts, WorkingSetBytes: u64(mem), UsageBytes: u64(mem)}
	linux.Process = &runtimeapi.ProcessUsage{Timestamp: ts, ProcessCount: u64(running)}
	return &runtimeapi.PodSandboxStats{
		Attributes: &runtimeapi.PodSandboxAttributes{Id: sb.ID, Metadata: sb.Config.GetMetadata(), Labels: sb.Config.GetLabels(), Annotations: sb.Config.GetAnnotations()},
		Linux:      linux,
	}
}
