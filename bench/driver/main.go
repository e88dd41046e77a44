// Command driver runs wasmcri's benchmark suite: the floor (wasmtime
// alone), pod starts over the CRI socket, containerd + runc where they run,
// concurrency, density, list latency and pulls. It prints the tables and
// writes them into docs/performance.md between its markers.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clog "github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/bench"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var (
	wasmcriBin = flag.String("wasmcri", "bin/wasmcri", "the wasmcri binary to measure")
	workDir    = flag.String("dir", "/var/tmp", "where the daemons keep their state (a disk like a node's /var/lib)")
	outDoc     = flag.String("out", "docs/performance.md", "document whose generated part is rewritten; empty prints only")
	scale      = flag.Float64("scale", 1, "multiplies every iteration count (0.1 for a quick look)")
	densityMax = flag.Int("density", 1000, "the largest number of idle pods to run")
	profileOut = flag.String("profile", "", "with -only: save the daemon's CPU profile of the part's busiest run to this file")
	only       = flag.String("only", "", `run only one part, printed, nothing written: "lists" (the list latency with -density idle pods), "lifecycles" (throughput and container roots) or "servers" (the example web server)`)
)

func n(base int) int { return max(int(float64(base)**scale), 3) }

func main() {
	flag.Parse()
	if *only != "" && *only != "lists" && *only != "lifecycles" && *only != "servers" {
		fmt.Fprintf(os.Stderr, "bench: -only %q: only \"lists\", \"lifecycles\" and \"servers\" are known\n", *only)
		os.Exit(2)
	}
	os.Setenv("RUST_LIB_BACKTRACE", "0")
	clog.SetLevel("warn")
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type suite struct {
	ctx      context.Context
	dir      string
	registry string
	client   *bench.Client
	daemon   *daemonProc
	logs     string
	out      strings.Builder
	targets  table
	seq      int
	// pulled are the modules of every image pulled into the main daemon;
	// podCount counts its pods.
	pulled   map[digest.Digest]bool
	podCount int
	// cdLifecycles is containerd's throughput, when it runs here.
	cdLifecycles lifecycleResult
	// podNetwork puts the pods s.pods starts on the pod network instead
	// of the node's.
	podNetwork bool
}

func (s *suite) section(title, text string) {
	s.out.WriteString("\n### " + title + "\n\n" + text + "\n")
	fmt.Printf("\n== %s\n%s", title, text)
}

func run() error {
	ctx := context.Background()
	dir, err := os.MkdirTemp(*workDir, "wasmcri-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	defer exec.Command("ip", "link", "del", benchBridge).Run()
	s := &suite{ctx: ctx, dir: dir, logs: filepath.Join(dir, "pod-logs"), targets: table{head: []string{"target", "measured", "met"}}, pulled: map[digest.Digest]bool{}}
	os.MkdirAll(s.logs, 0o755)

	reg, regProc, err := startRegistry(dir)
	if err != nil {
		return err
	}
	defer regProc.stop()
	s.registry = reg

	tinyExit, tinySleep := bench.Wat(bench.TinyExitWAT), bench.Wat(bench.TinySleepWAT)
	if *only == "lists" {
		if err := s.density(tinySleep, nil); err != nil {
			return err
		}
		s.section("Targets", s.targets.String())
		return nil
	}

	fmt.Println("building the Go example for wasip1")
	goModule, err := buildWasip1(ctx, dir)
	if err != nil {
		return err
	}

	floorTiny, err := floor(tinyExit, dir, n(3000))
	if err != nil {
		return err
	}
	floorGo, err := floor(goModule, dir, n(300))
	if err != nil {
		return err
	}

	if s.daemon, err = startWasmcri(*wasmcriBin, filepath.Join(dir, "wasmcri"), -1); err != nil {
		return err
	}
	defer s.daemon.stop()
	if s.client, err = bench.Dial(s.daemon.socket, true); err != nil {
		return err
	}
	defer s.client.Close()

	rtt := s.rtt(n(2000))
	tinyRef, err := s.image("tiny", tinyExit)
	if err != nil {
		return err
	}
	goRef, err := s.image("go", goModule)
	if err != nil {
		return err
	}
	if *only == "lifecycles" {
		return s.lifecycles(tinyRef, tinyExit)
	}
	if *only == "servers" {
		return s.servers(ctx)
	}
	warmTiny, err := s.pods(tinyRef, nil, n(500), true)
	if err != nil {
		return err
	}
	s.podNetwork = true
	netTiny, err := s.pods(tinyRef, nil, n(100), true)
	s.podNetwork = false
	if err != nil {
		return err
	}
	netTinyNoPool, err := s.podsWithoutPool(n(30))
	if err != nil {
		return err
	}
	coldTiny, err := s.coldPods(tinyExit, n(30))
	if err != nil {
		return err
	}
	warmGo, err := s.pods(goRef, []string{"exit", "0"}, n(150), true)
	if err != nil {
		return err
	}
	coldGo, err := s.coldPods(goModule, n(5))
	if err != nil {
		return err
	}
	profile := s.profile(tinyRef)

	cd := s.containerd(ctx)

	// Start-up table.
	t := table{head: []string{"operation", "p50 ms", "p99 ms"}}
	t.add("gRPC round trip (Version)", ms(rtt.p50()), ms(rtt.p99()))
	t.add("floor, tiny module (store + WASI + instantiate + _start)", ms(floorTiny.p50()), ms(floorTiny.p99()))
	t.add("floor, Go module", ms(floorGo.p50()), ms(floorGo.p99()))
	for _, r := range []struct {
		name string
		res  podResult
	}{{"wasmcri, tiny, cache warm", warmTiny}, {"wasmcri, tiny, cache warm, on the pod network, namespaces attached ahead of need (`network.pool_size` 4, the default)", netTiny},
		{"wasmcri, tiny, cache warm, on the pod network, each pod attached as it starts (`network.pool_size` 0)", netTinyNoPool}, {"wasmcri, tiny, cache cold", coldTiny}, {"wasmcri, Go, cache warm", warmGo}, {"wasmcri, Go, cache cold", coldGo}} {
		if len(r.res.pull) > 0 {
			t.add("**"+r.name+"**: PullImage, which compiles the module", ms(r.res.pull.p50()), ms(r.res.pull.p99()))
		}
		t.add("**"+r.name+"**: run → exited", ms(r.res.total.p50()), ms(r.res.total.p99()))
		t.add("&nbsp;&nbsp;RunPodSandbox", ms(r.res.run.p50()), ms(r.res.run.p99()))
		t.add("&nbsp;&nbsp;CreateContainer", ms(r.res.create.p50()), ms(r.res.create.p99()))
		t.add("&nbsp;&nbsp;StartContainer", ms(r.res.start.p50()), ms(r.res.start.p99()))
		t.add("&nbsp;&nbsp;started → exit seen", ms(r.res.exit.p50()), ms(r.res.exit.p99()))
	}
	if cd.err == nil {
		t.add("**containerd 1.6 + runc, static binary, host network**: run → exited", ms(cd.res.total.p50()), ms(cd.res.total.p99()))
		t.add("&nbsp;&nbsp;RunPodSandbox", ms(cd.res.run.p50()), ms(cd.res.run.p99()))
		t.add("&nbsp;&nbsp;CreateContainer", ms(cd.res.create.p50()), ms(cd.res.create.p99()))
		t.add("&nbsp;&nbsp;StartContainer", ms(cd.res.start.p50()), ms(cd.res.start.p99()))
		t.add("&nbsp;&nbsp;started → exit seen (status polled)", ms(cd.res.exit.p50()), ms(cd.res.exit.p99()))
	}
	text := t.String() + fmt.Sprintf("\nRatios of p50s: wasmcri/floor %s (tiny, warm), %s (Go, warm)", ratio(warmTiny.total.p50(), floorTiny.p50()), ratio(warmGo.total.p50(), floorGo.p50()))
	if cd.err == nil {
		text += fmt.Sprintf("; containerd/wasmcri %s (containerd's static binary against the tiny module, warm)", ratio(cd.res.total.p50(), warmTiny.total.p50()))
	}
	text += ".\n\nwasmcri's pods are on the node's network, as containerd's are here, except in the rows that say otherwise: there each pod gets a network namespace attached to the built-in bridge network (bridge, host-local, loopback and portmap plugins, run as programs). With the pool, RunPodSandbox takes a namespace attached ahead of need while the pool refills in the background, which shares the two cores with the pods timed; without it, RunPodSandbox runs CNI ADD. Neither row counts StopPodSandbox's CNI DEL, which happens after the exit.\n"
	if cd.err != nil {
		text += "\ncontainerd + runc: **skipped**: " + cd.err.Error() + "\n"
	}
	s.section("Pod start: RunPodSandbox + CreateContainer + StartContainer until the container has exited", text)

	// Target: start within 2× floor + one round trip per call.
	budget := 2*floorTiny.p50() + 3*rtt.p50()
	s.target("pod start, cached tiny module ≤ 2 × floor + one gRPC round trip per call", fmt.Sprintf("%s ms (budget %s ms)", ms(warmTiny.total.p50()), ms(budget)), warmTiny.total.p50() <= budget)

	if err := s.concurrency(tinySleep); err != nil {
		return err
	}
	if err := s.lifecycles(tinyRef, tinyExit); err != nil {
		return err
	}
	if err := s.density(tinySleep, goModule); err != nil {
		return err
	}
	if err := s.pulls(goModule); err != nil {
		return err
	}
	if err := s.servers(ctx); err != nil {
		return err
	}
	compiles := strings.Count(readFile(s.daemon.log), `msg="compiled module"`)
	s.target("each module compiled once, at its pull; no pod start compiles", fmt.Sprintf("%d compilations for the %d distinct modules pulled, in %d pods", compiles, len(s.pulled), s.podCount), compiles == len(s.pulled))
	s.section("CPU profile of the daemon during warm tiny pod starts (top entries)", "```\n"+profile+"```\n")
	s.section("Targets", s.targets.String())

	header := fmt.Sprintf("Measured %s on %s with `make bench` (`go run ./bench/driver -scale %g`), wasmcri at `%s`.\n",
		time.Now().UTC().Format("2006-01-02"), machine(), *scale, version())
	return writeDoc(*outDoc, header+s.out.String())
}

func (s *suite) target(name, measured string, met bool) {
	mark := "no"
	if met {
		mark = "**yes**"
	}
	s.targets.add(name, measured, mark)
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func version() string {
	out, err := exec.Command(*wasmcriBin, "version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.SplitN(string(out), "\n", 2)[0]
}

func buildWasip1(ctx context.Context, dir string) ([]byte, error) {
	out := filepath.Join(dir, "hello.wasm")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
	cmd.Dir = "examples/hello"
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build examples/hello: %v: %s", err, b)
	}
	return os.ReadFile(out)
}

// floor times wasmtime alone.
func floor(module []byte, dir string, iterations int) (sample, error) {
	f, err := bench.NewFloor(module, dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	f.Run("exit", "0") // warm caches
	var s sample
	for i := 0; i < iterations; i++ {
		start := time.Now()
		if err := f.Run("exit", "0"); err != nil {
			return nil, err
		}
		s = append(s, time.Since(start))
	}
	return s, nil
}

func (s *suite) rtt(iterations int) sample {
	var out sample
	for i := 0; i < iterations; i++ {
		start := time.Now()
		s.client.RT.Version(s.ctx, &runtimeapi.VersionRequest{})
		out = append(out, time.Since(start))
	}
	return out
}

// image pushes module as a Wasm artifact and pulls it into wasmcri.
func (s *suite) image(name string, module []byte) (string, error) {
	ref := fmt.Sprintf("%s/bench/%s:1", s.registry, name)
	if err := pushArtifact(s, ref, module); err != nil {
		return "", err
	}
	return ref, s.pull(ref, module)
}

// podsWithoutPool starts iterations pods of the tiny image on the pod network of a
// daemon of their own that attaches each pod as it starts (no pool).
func (s *suite) podsWithoutPool(iterations int) (podResult, error) {
	d, err := startWasmcri(*wasmcriBin, filepath.Join(s.dir, "no-pool"), 0)
	if err != nil {
		return podResult{}, err
	}
	defer d.stop()
	c, err := bench.Dial(d.socket, true)
	if err != nil {
		return podResult{}, err
	}
	defer c.Close()
	sub := *s
	sub.daemon, sub.client, sub.podNetwork = d, c, true
	ref := fmt.Sprintf("%s/bench/%s:1", s.registry, "tiny")
	if err := c.Pull(s.ctx, ref); err != nil {
		return podResult{}, err
	}
	return sub.pods(ref, nil, iterations, true)
}

// pull pulls ref, an image of module, into the main daemon, noting it.
func (s *suite) pull(ref string, module []byte) error {
	s.pulled[digest.FromBytes(module)] = true
	return s.client.Pull(s.ctx, ref)
}

func pushArtifact(s *suite, ref string, module []byte) error {
	return imagebuild.Push(s.ctx, ref, imagebuild.BuildArtifact(module, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer), image.RegistryOptions{}, nil)
}

// podResult are a series of pod starts; pull is timed only for images of
// modules never seen before.
type podResult struct{ pull, run, create, start, exit, total sample }

func (r *podResult) add(t bench.PodTiming) {
	r.run = append(r.run, t.RunPodSandbox)
	r.create = append(r.create, t.CreateContainer)
	r.start = append(r.start, t.StartContainer)
	r.exit = append(r.exit, t.ToExit)
	r.total = append(r.total, t.Total)
}

// pods starts pods of ref one after another, removing each after.
func (s *suite) pods(ref string, args []string, iterations int, warmUp bool) (podResult, error) {
	var r podResult
	s.podCount += iterations
	if warmUp {
		t, err := s.client.RunPod(s.ctx, bench.PodOptions{Image: ref, Args: args, Wait: true, LogDirectory: s.logs, HostNetwork: !s.podNetwork})
		if err != nil {
			return r, err
		}
		s.client.RemovePod(s.ctx, t.SandboxID)
	}
	for i := 0; i < iterations; i++ {
		t, err := s.client.RunPod(s.ctx, bench.PodOptions{Image: ref, Args: args, Wait: true, LogDirectory: s.logs, HostNetwork: !s.podNetwork})
		if err != nil {
			return r, err
		}
		r.add(t)
		if err := s.client.RemovePod(s.ctx, t.SandboxID); err != nil {
			return r, err
		}
	}
	return r, nil
}

// coldPods pulls each pod's image, of a module never seen before, and
// starts the pod: PullImage compiles the module, the pod finds it
// compiled.
func (s *suite) coldPods(module []byte, iterations int) (podResult, error) {
	var r podResult
	for i := 0; i < iterations; i++ {
		s.seq++
		ref := fmt.Sprintf("%s/bench/cold-%d:1", s.registry, s.seq)
		unique := bench.Unique(module, fmt.Sprint(s.seq))
		if err := pushArtifact(s, ref, unique); err != nil {
			return r, err
		}
		pulling := time.Now()
		if err := s.pull(ref, unique); err != nil {
			return r, err
		}
		r.pull = append(r.pull, time.Since(pulling))
		one, err := s.pods(ref, []string{"exit", "0"}, 1, false)
		if err != nil {
			return r, err
		}
		r.run, r.create, r.start, r.exit, r.total = append(r.run, one.run...), append(r.create, one.create...), append(r.start, one.start...), append(r.exit, one.exit...), append(r.total, one.total...)
	}
	return r, nil
}

// profile takes a CPU profile of the daemon while it starts tiny pods.
func (s *suite) profile(ref string) string {
	return s.profileWhile(false, func() {
		if t, err := s.client.RunPod(s.ctx, bench.PodOptions{Image: ref, Wait: true, LogDirectory: s.logs, HostNetwork: true}); err == nil {
			s.client.RemovePod(s.ctx, t.SandboxID)
		}
	})
}

// profileWhile takes a 3s CPU profile of the daemon while load runs over
// and over, and returns its top entries, by their own time or with their
// callees' (cum).
func (s *suite) profileWhile(cum bool, load func()) string {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			load()
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	resp, err := s.daemon.pprofGet("/debug/pprof/profile?seconds=3")
	if err != nil {
		return "profile unavailable: " + err.Error() + "\n"
	}
	defer resp.Body.Close()
	prof := filepath.Join(s.dir, "cpu.pprof")
	f, _ := os.Create(prof)
	io.Copy(f, resp.Body)
	f.Close()
	args := []string{"tool", "pprof", "-top", "-nodecount=20"}
	if cum {
		// By time with callees; the layers every call passes through
		// (gRPC's, the handlers' wrappers) would fill the top otherwise.
		args = append(args, "-nodecount=25", "-cum", `-hide=^google\.golang\.org/grpc\.|_Handler|recoverUnary|unaryInterceptor|runtime\.(systemstack|mcall|goexit)`)
	}
	out, err := exec.Command("go", append(args, *wasmcriBin, prof)...).Output()
	if err != nil {
		return "pprof failed: " + err.Error() + "\n"
	}
	lines := strings.Split(string(out), "\n")
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "flat") {
			return strings.Join(lines[i-1:], "\n")
		}
	}
	return string(out)
}

type containerdResult struct {
	res podResult
	err error
}

// containerd measures the same calls against containerd + runc.
func (s *suite) containerd(ctx context.Context) containerdResult {
	env, err := startContainerd(ctx, s.dir, s.registry)
	if err != nil {
		return containerdResult{err: err}
	}
	defer env.proc.stop()
	// containerd 1.6 has no GetContainerEvents: poll status instead.
	c, err := bench.Dial(env.socket, false)
	if err != nil {
		return containerdResult{err: err}
	}
	defer c.Close()
	if err := c.Pull(ctx, env.image); err != nil {
		return containerdResult{err: fmt.Errorf("pull through containerd: %w", err)}
	}
	var r podResult
	for i := 0; i < n(30)+1; i++ {
		t, err := c.RunPod(ctx, bench.PodOptions{Image: env.image, HostNetwork: true, Wait: true})
		if err != nil {
			return containerdResult{err: fmt.Errorf("containerd pod start: %w (see %s)", err, env.proc.log)}
		}
		if i > 0 { // the first pulls the pause image
			r.add(t)
		}
		if err := c.RemovePod(ctx, t.SandboxID); err != nil {
			return containerdResult{err: err}
		}
	}
	lc, err := lifecycles(func() (*bench.Client, error) { return bench.Dial(env.socket, false) },
		bench.PodOptions{Image: env.image, HostNetwork: true, Wait: true}, 8, time.Duration(float64(10*time.Second)**scale))
	if err != nil {
		return containerdResult{err: fmt.Errorf("containerd lifecycles: %w", err)}
	}
	s.cdLifecycles = lc
	return containerdResult{res: r}
}

func writeDoc(path, generated string) error {
	if path == "" {
		return nil
	}
	const begin, end = "<!-- bench:begin (generated by make bench) -->", "<!-- bench:end -->"
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	i, j := strings.Index(string(old), begin), strings.Index(string(old), end)
	if i < 0 || j < i {
		return fmt.Errorf("%s lacks the %q and %q markers", path, begin, end)
	}
	doc := string(old[:i]) + begin + "\n" + generated + "\n" + string(old[j:])
	fmt.Println("\nwrote", path)
	return os.WriteFile(path, []byte(doc), 0o644)
}

func pushBuilt(s *suite, ref string, b *imagebuild.Built) error {
	return imagebuild.Push(s.ctx, ref, b, image.RegistryOptions{}, nil)
}
