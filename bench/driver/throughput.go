package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wasmcri/wasmcri/bench"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// throughput runs full lifecycles of a cached tiny module (run, create,
// start, exit seen, stop, remove) from clients separate CRI connections to
// wasmcri at once, as many as fit in the window, and reports lifecycles
// per second and the start-to-exit latency under that load. Exits are seen
// on one event stream the clients share, as kubelet's pod workers share
// its one stream.
func (s *suite) throughput(ref string, clients int, window time.Duration, logs bool) (lifecycleResult, error) {
	o := bench.PodOptions{Image: ref, Wait: true, HostNetwork: true}
	if logs {
		o.LogDirectory = s.logs
	}
	watch, err := bench.Dial(s.daemon.socket, true)
	if err != nil {
		return lifecycleResult{}, err
	}
	defer watch.Close()
	probe, err := watch.Another()
	if err != nil {
		return lifecycleResult{}, err
	}
	defer probe.Close()
	stop := make(chan struct{})
	probed := make(chan sample)
	go func() { probed <- emptyCalls(probe, stop) }()
	daemonCPU, clientCPU := s.daemon.cpuTime(), ownCPU()
	r, err := lifecycles(watch.Another, o, clients, window)
	r.daemonCPU, r.clientCPU = s.daemon.cpuTime()-daemonCPU, ownCPU()-clientCPU
	close(stop)
	r.emptyCall = <-probed
	s.podCount += r.count
	return r, err
}

// emptyCalls times an empty call (Version) on c every 5 ms until stop: the
// round trip any call pays under the load around it, before the runtime
// does anything.
func emptyCalls(c *bench.Client, stop <-chan struct{}) sample {
	var smp sample
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return smp
		case <-t.C:
		}
		start := time.Now()
		if _, err := c.RT.Version(context.Background(), &runtimeapi.VersionRequest{}); err == nil {
			smp = append(smp, time.Since(start))
		}
	}
}

// lifecycles runs pods of o from clients connections made by dial, each
// starting the next as soon as its last is removed, until window ends.
func lifecycles(dial func() (*bench.Client, error), o bench.PodOptions, clients int, window time.Duration) (lifecycleResult, error) {
	conns := make([]*bench.Client, clients)
	for i := range conns {
		c, err := dial()
		if err != nil {
			return lifecycleResult{}, err
		}
		defer c.Close()
		conns[i] = c
	}
	var (
		mu       sync.Mutex
		r        lifecycleResult
		done     atomic.Int64
		firstErr error
		wg       sync.WaitGroup
	)
	ctx := context.Background()
	start := time.Now()
	deadline := start.Add(window)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				t, err := c.RunPod(ctx, o)
				if err == nil {
					err = c.RemovePod(ctx, t.SandboxID)
				}
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
				done.Add(1)
				mu.Lock()
				r.startToExit = append(r.startToExit, t.StartContainer+t.ToExit)
				r.create = append(r.create, t.CreateContainer)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r.took = time.Since(start)
	r.count = int(done.Load())
	return r, firstErr
}

// callFloor is the gRPC floor under the lifecycle figure: clients
// connections each making, as fast as they can over window, groups of
// five empty calls (Version), as many calls as a lifecycle makes. It is
// what the transport alone allows on this machine, whatever the runtime
// does.
func (s *suite) callFloor(clients int, window time.Duration) (float64, error) {
	var (
		groups   atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	ctx := context.Background()
	start := time.Now()
	deadline := start.Add(window)
	for range clients {
		c, err := bench.Dial(s.daemon.socket, false)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				for range 5 {
					if _, err := c.RT.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return
					}
				}
				groups.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(groups.Load()) / time.Since(start).Seconds(), firstErr
}

// lifecycleResult is a throughput run.
type lifecycleResult struct {
	count               int
	took                time.Duration
	startToExit, create sample
	// emptyCall is the round trip of an empty call made beside the run.
	emptyCall sample
	// daemonCPU and clientCPU are what the runtime's process and this
	// driver used over the run (zero where not measured).
	daemonCPU, clientCPU time.Duration
}

func (r lifecycleResult) perSecond() float64 { return float64(r.count) / r.took.Seconds() }

// cpuPerLifecycle says what one lifecycle cost the daemon and the client.
func (r lifecycleResult) cpuPerLifecycle() string {
	if r.daemonCPU == 0 || r.count == 0 {
		return ""
	}
	per := func(d time.Duration) string { return ms(d / time.Duration(r.count)) }
	return fmt.Sprintf("; CPU per lifecycle: daemon %s ms, client %s ms", per(r.daemonCPU), per(r.clientCPU))
}

// ownCPU is the CPU time this driver has used so far.
func ownCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// compatCreate times CreateContainer of a compat image holding files
// small files beside its module, in one pod, removing each container after.
func (s *suite) compatCreate(module []byte, files, iterations int) (sample, error) {
	var entries []imagebuild.TarEntry
	for i := 0; i < files; i++ {
		entries = append(entries, imagebuild.TarEntry{Name: fmt.Sprintf("/data/file-%02d.txt", i), Data: []byte(fmt.Sprintf("file %d\n", i))})
	}
	b, err := imagebuild.BuildCompat(module, imagebuild.CompatOptions{Files: entries})
	if err != nil {
		return nil, err
	}
	ref := fmt.Sprintf("%s/bench/compat-%d:1", s.registry, files)
	if err := pushBuilt(s, ref, b); err != nil {
		return nil, err
	}
	if err := s.pull(ref, module); err != nil {
		return nil, err
	}
	return s.client.CreateTimes(s.ctx, ref, iterations+1, s.logs)
}

// lifecycles measures throughput and cheap container roots against their
// targets.
func (s *suite) lifecycles(tinyRef string, tinyModule []byte) error {
	const clients = 8
	// A short run first: the daemon's pools and caches warm up.
	if _, err := s.throughput(tinyRef, clients, 300*time.Millisecond, false); err != nil {
		return err
	}
	window := time.Duration(float64(10*time.Second) * *scale)
	if *profileOut != "" {
		go s.saveProfile(*profileOut, window)
	}
	r, err := s.throughput(tinyRef, clients, window, false)
	if err != nil {
		return err
	}
	logged, err := s.throughput(tinyRef, clients, window, true)
	if err != nil {
		return err
	}
	creates, err := s.compatCreate(tinyModule, 30, n(300))
	if err != nil {
		return err
	}
	floor, err := s.callFloor(clients, window/2)
	if err != nil {
		return err
	}
	t := table{head: []string{"what", "p50 ms", "p99 ms", "figure"}}
	t.add(fmt.Sprintf("**floor: groups of 5 empty CRI calls** (Version, as many calls as a lifecycle makes), %d clients at once, same daemon", clients), "", "", fmt.Sprintf("%.0f /s", floor))
	for _, row := range []struct {
		name string
		r    lifecycleResult
	}{{"wasmcri, no log file", r}, {"wasmcri, each container logging to a file in the pod's log directory, as under kubelet", logged}, {"containerd 1.6 + runc, static binary, host network, no log file (exit seen by polling status)", s.cdLifecycles}} {
		if row.r.count == 0 {
			continue
		}
		t.add(fmt.Sprintf("**full lifecycles, %d clients at once** (run, create, start, exit seen, stop, remove): %s", clients, row.name), "", "", fmt.Sprintf("%.0f /s (%d in %.1f s%s)", row.r.perSecond(), row.r.count, row.r.took.Seconds(), row.r.cpuPerLifecycle()))
		t.add("&nbsp;&nbsp;StartContainer → exit seen, under that load", ms(row.r.startToExit.p50()), ms(row.r.startToExit.p99()), "")
		t.add("&nbsp;&nbsp;CreateContainer, under that load", ms(row.r.create.p50()), ms(row.r.create.p99()), "")
		if len(row.r.emptyCall) > 0 {
			t.add("&nbsp;&nbsp;an empty call (Version) under that load, every 5 ms on a connection of its own", ms(row.r.emptyCall.p50()), ms(row.r.emptyCall.p99()), "")
		}
	}
	t.add("CreateContainer of a compat image with 30 files besides its module, one at a time", ms(creates.p50()), ms(creates.p99()), "")
	s.section("Throughput and container roots", t.String()+"\nA CRI log file is a file created on the node's disk for each container (kubelet's log directory is there, not in memory). On this machine's disk a creation costs tens of µs when the disk is idle but 1–3 ms of kernel time when other work writes to it, so the second figure depends on the disk more than on the runtime.\n")
	s.target(fmt.Sprintf("≥ 1,500 full lifecycles/s with %d clients", clients), fmt.Sprintf("%.0f /s (gRPC floor: %.0f groups of 5 empty calls /s)", r.perSecond(), floor), r.perSecond() >= 1500)
	s.target("start-to-exit p50 ≤ 1 ms under that load", fmt.Sprintf("%s ms (an empty call's round trip under that load: %s ms)", ms(r.startToExit.p50()), ms(r.emptyCall.p50())), r.startToExit.p50() <= time.Millisecond)
	s.target("CreateContainer of a 30-file compat image ≤ 2 ms p50", ms(creates.p50())+" ms", creates.p50() <= 2*time.Millisecond)
	return nil
}

// saveProfile saves the daemon's CPU profile over window to path.
func (s *suite) saveProfile(path string, window time.Duration) {
	resp, err := s.daemon.pprofGet(fmt.Sprintf("/debug/pprof/profile?seconds=%d", max(int(window.Seconds())-1, 1)))
	if err != nil {
		fmt.Println("profile:", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		fmt.Println("profile:", err)
		return
	}
	defer f.Close()
	io.Copy(f, resp.Body)
}
