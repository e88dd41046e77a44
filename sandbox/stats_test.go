package sandbox

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/internal/crilog/crilogtest"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestStatsEventsResourcesAndLogs(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("pod")
	events, cancel := e.m.Subscribe()
	defer cancel()

	cfg := ctrConfig("holder", img, "alloc", "24")
	cfg.Linux = &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 256 << 20}}
	holder := e.start(sb, cfg)
	crilogtest.WaitFor(t, holder.LogPath, "stdout", "holding 24 MiB")
	// Its figures show what it holds, once its thread has been sampled.
	var st Stats
	waitFor(t, "the holder's stats", func() bool {
		var err error
		if st, err = e.m.ContainerStats(holder.ID); err != nil {
			t.Fatal(err)
		}
		return st.MemoryBytes >= 24<<20 && st.CPU > 0 && st.WritableInodes > 0
	})

	// Lowering the memory limit below what it holds: the next allocation
	// fails and the container is OOMKilled.
	grower := e.start(sb, ctrConfig("grower", img, "alloc-slowly"))
	crilogtest.WaitFor(t, grower.LogPath, "stdout", "holding 20 MiB")
	if err := e.m.UpdateResources(grower.ID, &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 40 << 20}); err != nil {
		t.Fatal(err)
	}
	got := e.waitExited(grower.ID, 20*time.Second)
	if got.Reason != ReasonOOMKilled || got.ExitCode != 137 || got.Resources.MemoryLimitBytes != 40<<20 {
		t.Errorf("after the limit was lowered: reason %q exit %d resources %+v", got.Reason, got.ExitCode, got.Resources)
	}
	if err := e.m.UpdateResources(grower.ID, &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 1}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("update of an exited container: %v", err)
	}
	if err := e.m.UpdateResources(holder.ID, &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: -5}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative limit: %v", err)
	}

	// Rotation: kubelet renames the file, then asks for a reopen.
	ticker := e.start(sb, ctrConfig("ticker", img, "sleep-forever"))
	crilogtest.WaitFor(t, ticker.LogPath, "stdout", "tick 2")
	rotated := ticker.LogPath + ".1"
	if err := os.Rename(ticker.LogPath, rotated); err != nil {
		t.Fatal(err)
	}
	if err := e.m.ReopenLog(ticker.ID); err != nil {
		t.Fatal(err)
	}
	crilogtest.WaitFor(t, ticker.LogPath, "stdout", "tick 6")
	e.m.StopContainer(ticker.ID, 0)
	old, cur := readFile(t, rotated), readFile(t, ticker.LogPath)
	for i := 0; i <= 6; i++ {
		line := " stdout F tick " + strconv.Itoa(i) + "\n"
		if strings.Count(old+cur, line) != 1 {
			t.Errorf("tick %d appears %d times across the rotation", i, strings.Count(old+cur, line))
		}
	}
	if err := e.m.ReopenLog(ticker.ID); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("reopen of an exited container's log: %v", err)
	}
	e.m.RemoveContainer(ticker.ID)

	want := map[string][]EventType{
		holder.ID: {ContainerCreatedEvent, ContainerStartedEvent},
		grower.ID: {ContainerCreatedEvent, ContainerStartedEvent, ContainerStoppedEvent},
		ticker.ID: {ContainerCreatedEvent, ContainerStartedEvent, ContainerStoppedEvent, ContainerDeletedEvent},
	}
	got2 := map[string][]EventType{}
	for len(events) > 0 {
		ev := <-events
		got2[ev.ContainerID] = append(got2[ev.ContainerID], ev.Type)
	}
	for id, w := range want {
		if fmtTypes(got2[id]) != fmtTypes(w) {
			t.Errorf("events of %s: %v, want %v", id[:12], got2[id], w)
		}
	}
}

func fmtTypes(ts []EventType) string {
	var s []string
	for _, t := range ts {
		s = append(s, strconv.Itoa(int(t)))
	}
	return strings.Join(s, " ")
}

// The stats listing reads each instance's CPU clock and memory; only the
// detailed one (for the metrics endpoint) reads its user and system time,
// and they agree.
func TestStatsAndDetails(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("pod")
	spinner := e.start(sb, ctrConfig("spinner", img, "spin"))
	everything := func(*Container) bool { return true }
	stats := func() (got Stats) {
		n := 0
		e.m.EachContainerStats(everything, func(c *Container, st *Stats) { got = *st; n++ })
		if n != 1 {
			t.Fatalf("%d containers listed, want 1", n)
		}
		return got
	}
	waitFor(t, "100ms of CPU", func() bool { return stats().CPU > 100*time.Millisecond })

	cheap := stats()
	all := e.m.AllContainerDetails(everything)
	if len(all) != 1 || all[0].ID != spinner.ID {
		t.Fatalf("AllContainerDetails: %+v", all)
	}
	detailed := all[0].Stats
	if cheap.Instance.User != 0 || cheap.Instance.System != 0 {
		t.Errorf("EachContainerStats read user/system time: %+v", cheap.Instance)
	}
	if busy := detailed.Instance.User + detailed.Instance.System; busy == 0 || detailed.CPU < cheap.CPU || detailed.Instance.CPU != detailed.CPU {
		t.Errorf("details %+v after stats %+v", detailed.Instance, cheap)
	}
	if cheap.MemoryBytes == 0 || detailed.MemoryBytes == 0 {
		t.Errorf("memory: stats %d, details %d", cheap.MemoryBytes, detailed.MemoryBytes)
	}
}
