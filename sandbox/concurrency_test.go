package sandbox

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Lifecycles of many containers in several pods run at once, with lists,
// statuses, stats and limit updates beside them, while one pod is stopped
// as containers are still being created and started in it. Each container
// ends where its own calls put it, none runs in the stopped pod, and the
// records a restart would read agree with what the manager shows.
func TestConcurrentLifecycles(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	const pods, perPod = 4, 6
	sbs := make([]Sandbox, pods)
	for p := range sbs {
		sbs[p] = e.sandbox(fmt.Sprintf("busy-%d", p))
	}
	victim := sbs[pods-1]
	limit := &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 512 << 20}

	readers := make(chan struct{})
	var readersDone sync.WaitGroup
	readersDone.Add(1)
	go func() {
		defer readersDone.Done()
		for {
			select {
			case <-readers:
				return
			default:
			}
			for _, c := range e.m.Containers() {
				e.m.Container(c.ID)
				e.m.ContainerStats(c.ID)
				e.m.UpdateResources(c.ID, limit)
			}
			e.m.Sandboxes()
			e.m.EachSandbox(func(*Sandbox) {})
			e.m.EachContainer(func(*Container) {})
			e.m.EachContainerStats(func(*Container) bool { return true }, func(*Container, *Stats) {})
			e.m.AllContainerDetails(func(*Container) bool { return true })
		}
	}()

	type outcome struct {
		pod, i int
		id     string
		err    error
	}
	outcomes := make(chan outcome, pods*perPod)
	var wg sync.WaitGroup
	for p := range pods {
		for i := range perPod {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := context.Background()
				c, err := e.m.CreateContainer(ctx, sbs[p].ID, ctrConfig(fmt.Sprintf("c%d", i), img, "sleep-forever"))
				if err == nil {
					err = e.m.StartContainer(ctx, c.ID)
				}
				if err == nil && i%2 == 0 {
					if err = e.m.StopContainer(c.ID, 0); err == nil {
						err = e.m.RemoveContainer(c.ID)
					}
				} else if err == nil {
					// The readers may update it too, with the same limit.
					err = e.m.UpdateResources(c.ID, limit)
				}
				outcomes <- outcome{p, i, c.ID, err}
			}()
		}
	}
	if err := e.m.StopSandbox(context.Background(), victim.ID); err != nil {
		t.Fatal(err)
	}
	// Once the stop has returned nothing runs in the pod, and nothing
	// created or started in it from then on can run.
	noneRunIn := func(when string) {
		for _, c := range e.m.Containers() {
			if c.SandboxID == victim.ID && c.State == ContainerRunning {
				t.Errorf("%s: container %s runs in a stopped pod", when, c.ID)
			}
		}
	}
	noneRunIn("as the stop returned")
	wg.Wait()
	close(outcomes)
	close(readers)
	readersDone.Wait()

	for o := range outcomes {
		switch {
		case sbs[o.pod].ID == victim.ID:
			// Refused once the pod was stopped, never any other failure.
			if o.err != nil && !errdefs.IsFailedPrecondition(o.err) {
				t.Errorf("container %d of the stopped pod: %v", o.i, o.err)
			}
		case o.err != nil:
			t.Errorf("container %d of pod %d: %v", o.i, o.pod, o.err)
		case o.i%2 == 0:
			if _, err := e.m.Container(o.id); !errdefs.IsNotFound(err) {
				t.Errorf("removed container %d of pod %d: %v", o.i, o.pod, err)
			}
		default:
			c, err := e.m.Container(o.id)
			if err != nil || c.State != ContainerRunning || c.Resources.MemoryLimitBytes != 512<<20 {
				t.Errorf("container %d of pod %d: %+v, %v; want running with the updated limit", o.i, o.pod, c.ContainerStatus, err)
			}
		}
	}
	noneRunIn("after every start had returned")
	if _, err := e.m.CreateContainer(context.Background(), victim.ID, ctrConfig("late", img, "sleep-forever")); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("create in a stopped pod: %v, want FailedPrecondition", err)
	}

	// What a restart would load is what the manager shows.
	_, records, err := e.m.records.load()
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]ContainerStatus{}
	for _, c := range e.m.Containers() {
		shown[c.ID] = c.ContainerStatus
	}
	if len(records) != len(shown) {
		t.Errorf("%d container records, %d containers shown", len(records), len(shown))
	}
	for _, r := range records {
		s, ok := shown[r.ID]
		if !ok || s.State != r.State || s.Resources != r.Resources || s.ExitCode != r.ExitCode || !s.StartedAt.Equal(r.StartedAt) {
			t.Errorf("container %s: record %+v, shown %+v", r.ID, r.ContainerStatus, s)
		}
	}
}
