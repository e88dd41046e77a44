package main

import (
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/wasmcri/wasmcri/bench"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// startIdle starts count pods of ref that stay running, from workers
// goroutines at once; it returns their sandbox IDs and the wall time.
func (s *suite) startIdle(ref string, args []string, count, workers int) ([]string, time.Duration, error) {
	ids := make([]string, count)
	errs := make(chan error, count)
	var wg sync.WaitGroup
	next := make(chan int, count)
	for i := 0; i < count; i++ {
		next <- i
	}
	close(next)
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t, err := s.client.RunPod(s.ctx, bench.PodOptions{Image: ref, Args: args, LogDirectory: s.logs, HostNetwork: true})
				if err != nil {
					errs <- err
					return
				}
				ids[i] = t.SandboxID
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return nil, 0, err
	}
	return ids, took, nil
}

func (s *suite) removeAll(ids []string, workers int) time.Duration {
	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan string, len(ids))
	for _, id := range ids {
		next <- id
	}
	close(next)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range next {
				s.client.RemovePod(s.ctx, id)
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

func (s *suite) concurrency(sleepModule []byte) error {
	ref, err := s.image("sleep", sleepModule)
	if err != nil {
		return err
	}
	const pods = 100
	s.podCount += pods
	ids, took, err := s.startIdle(ref, nil, pods, pods)
	if err != nil {
		return err
	}
	running := 0
	list, err := s.client.RT.ListContainers(s.ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}})
	if err == nil {
		running = len(list.Containers)
	}
	removed := s.removeAll(ids, pods)
	t := table{head: []string{"what", "figure"}}
	t.add(fmt.Sprintf("%d idle pods started at once (all CRI calls issued concurrently): time until every container runs", pods), ms(took)+" ms")
	t.add("containers running then", fmt.Sprint(running))
	t.add("pod starts per second", fmt.Sprintf("%.0f", float64(pods)/took.Seconds()))
	t.add(fmt.Sprintf("%d pods stopped and removed at once", pods), ms(removed)+" ms")
	s.section("Concurrency", t.String())
	return nil
}

// density runs idle pods on a fresh daemon each time, so that the growth of
// its resident set is the pods' and not what earlier runs left behind.
func (s *suite) density(sleepModule, goModule []byte) error {
	t := table{head: []string{"idle pods", "module", "time per pod start ms", "daemon RSS before MiB", "after MiB", "RSS per pod KiB", "PSS per pod KiB", "threads per pod"}}
	var lists *table
	var statsProfile string
	runs := []struct {
		name   string
		module []byte
		args   []string
		count  int
		lists  bool
	}{
		{"tiny (sleeps in poll_oneoff)", sleepModule, nil, min(100, *densityMax), false},
		{"tiny (sleeps in poll_oneoff)", sleepModule, nil, *densityMax, true},
		{"Go (time.Sleep loop)", goModule, []string{"sleep-forever"}, min(100, *densityMax), false},
	}
	main := *s
	defer func() { s.targets = main.targets }()
	for i, r := range runs {
		if *only == "lists" && !r.lists {
			continue
		}
		d, err := startWasmcri(*wasmcriBin, filepath.Join(s.dir, fmt.Sprintf("density-%d", i)), -1)
		if err != nil {
			return err
		}
		c, err := bench.Dial(d.socket, false)
		if err != nil {
			d.stop()
			return err
		}
		sub := main
		sub.daemon, sub.client = d, c
		ref, err := sub.image("idle", r.module)
		if err == nil {
			// One pod first: the module is compiled, pools and caches warm.
			var ids []string
			ids, _, err = sub.startIdle(ref, r.args, 1, 1)
			sub.removeAll(ids, 1)
		}
		if err != nil {
			c.Close()
			d.stop()
			return err
		}
		time.Sleep(time.Second)
		rss0, th0 := d.status()
		pss0 := d.pss()
		ids, took, err := sub.startIdle(ref, r.args, r.count, 2)
		if err != nil {
			c.Close()
			d.stop()
			return fmt.Errorf("%d idle pods: %w", r.count, err)
		}
		time.Sleep(2 * time.Second)
		rss, th := d.status()
		perPod := float64(rss-rss0) / float64(r.count)
		pssPerPod := float64(d.pss()-pss0) / float64(r.count)
		t.add(fmt.Sprint(r.count), r.name, ms(took/time.Duration(r.count)), fmt.Sprintf("%.0f", float64(rss0)/1024), fmt.Sprintf("%.0f", float64(rss)/1024),
			fmt.Sprintf("%.0f", perPod), fmt.Sprintf("%.0f", pssPerPod), fmt.Sprintf("%.2f", float64(th-th0)/float64(r.count)))
		if r.lists {
			lists = sub.listLatency()
			statsProfile = sub.profileWhile(true, func() {
				sub.client.RT.ListContainerStats(sub.ctx, &runtimeapi.ListContainerStatsRequest{})
			})
			sub.target("≤ 1 MiB daemon RSS per idle running tiny pod", fmt.Sprintf("%.0f KiB", perPod), perPod <= 1024)
			sub.target(fmt.Sprintf("%d running pods on one node", r.count), fmt.Sprintf("%d running, started in %s ms each", r.count, ms(took/time.Duration(r.count))), r.count >= 1000)
			main.targets = sub.targets
		}
		sub.removeAll(ids, 2)
		c.Close()
		d.stop()
	}
	text := t.String() + "\nEach row runs on a fresh daemon that has already run one pod of the module. RSS per pod is the growth of the daemon's resident set over the idle pods, divided by their number; PSS and threads likewise. Instances share their module's code (one engine, one loaded module per compiled module); each maps the module's data image copy-on-write into its memory, which RSS counts once per instance and PSS once in all: PSS is the memory the pods really take.\n"
	if lists != nil {
		text += fmt.Sprintf("\nList latency with %d containers (kubelet relists every second):\n\n", *densityMax) + lists.String()
	}
	s.section("Density: idle long-running pods", text)
	if statsProfile != "" {
		s.section(fmt.Sprintf("CPU profile of the daemon during ListContainerStats at %d containers (top entries with their callees, gRPC's layers hidden)", *densityMax), "```\n"+statsProfile+"```\n")
	}
	return nil
}

// listLatency times kubelet's list calls, one after another, end to end
// (the client's decoding included). The target is of the three kubelet
// relists every second; ListPodSandboxStats is shown beside them. Beside
// each call: the client's decoding of the same answer alone, and an empty
// call's round trip, what no runtime can take away from the figure.
func (s *suite) listLatency() *table {
	t := table{head: []string{"call", "p50 ms", "p99 ms", "daemon CPU per call ms", "answer KB", "client's decoding alone, p50 ms"}}
	calls := []struct {
		name   string
		target bool
		call   func() (proto.Message, error)
	}{
		{"ListPodSandbox", true, func() (proto.Message, error) {
			return s.client.RT.ListPodSandbox(s.ctx, &runtimeapi.ListPodSandboxRequest{})
		}},
		{"ListContainers", true, func() (proto.Message, error) {
			return s.client.RT.ListContainers(s.ctx, &runtimeapi.ListContainersRequest{})
		}},
		{"ListContainerStats", true, func() (proto.Message, error) {
			return s.client.RT.ListContainerStats(s.ctx, &runtimeapi.ListContainerStatsRequest{})
		}},
		{"ListPodSandboxStats", false, func() (proto.Message, error) {
			return s.client.RT.ListPodSandboxStats(s.ctx, &runtimeapi.ListPodSandboxStatsRequest{})
		}},
		{"Version (an empty call)", false, func() (proto.Message, error) {
			return s.client.RT.Version(s.ctx, &runtimeapi.VersionRequest{})
		}},
	}
	worst, worstName, failed := time.Duration(0), "", false
	for _, c := range calls {
		var (
			smp  sample
			err  error
			last proto.Message
		)
		cpu := s.daemon.cpuTime()
		for i := 0; i < n(200) && err == nil; i++ {
			start := time.Now()
			if last, err = c.call(); err == nil {
				smp = append(smp, time.Since(start))
			}
		}
		cpu = s.daemon.cpuTime() - cpu
		if err != nil {
			t.add(c.name, "error: "+err.Error(), "", "", "", "")
			failed = failed || c.target
			continue
		}
		size, decode := decoding(last, n(200))
		t.add(c.name, ms(smp.p50()), ms(smp.p99()), ms(cpu/time.Duration(len(smp))), fmt.Sprintf("%.0f", float64(size)/1000), ms(decode.p50()))
		if c.target && smp.p99() >= worst {
			worst, worstName = smp.p99(), c.name
		}
	}
	measured := fmt.Sprintf("%s ms (worst p99, %s)", ms(worst), worstName)
	if failed {
		measured = "a list call failed"
	}
	s.target(fmt.Sprintf("ListPodSandbox, ListContainers, ListContainerStats p99 < 5 ms at %d containers", *densityMax), measured, !failed && worst < 5*time.Millisecond)
	return &t
}

// decoding is the wire size of answer m and the time a client takes to
// decode it, iterations times.
func decoding(m proto.Message, iterations int) (int, sample) {
	b, err := proto.Marshal(m)
	if err != nil {
		return 0, nil
	}
	var smp sample
	for range iterations {
		into := m.ProtoReflect().New().Interface()
		start := time.Now()
		if proto.Unmarshal(b, into) != nil {
			return len(b), nil
		}
		smp = append(smp, time.Since(start))
	}
	return len(b), smp
}

func (s *suite) pulls(goModule []byte) error {
	const size = 8 << 20
	big := bench.Padded(goModule, size-len(goModule))
	var cold, present sample
	for i := 0; i < n(10); i++ {
		s.seq++
		ref := fmt.Sprintf("%s/bench/big-%d:1", s.registry, s.seq)
		mod := bench.Unique(big, fmt.Sprint(s.seq))
		if err := pushArtifact(s, ref, mod); err != nil {
			return err
		}
		start := time.Now()
		if err := s.pull(ref, mod); err != nil {
			return err
		}
		cold = append(cold, time.Since(start))
		if i == 0 {
			for j := 0; j < n(30); j++ {
				start := time.Now()
				if err := s.pull(ref, mod); err != nil {
					return err
				}
				present = append(present, time.Since(start))
			}
		}
	}
	t := table{head: []string{"PullImage of an 8 MiB module from the loopback registry", "p50 ms", "p99 ms"}}
	t.add("cold (not on the node; download, digest check, validation, compilation)", ms(cold.p50()), ms(cold.p99()))
	t.add("already present (manifest resolved again, nothing downloaded)", ms(present.p50()), ms(present.p99()))
	s.section("Pull", t.String())
	return nil
}
