package wasm

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/internal/syncbuf"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// sharedCache is the compile cache of every test that is not about the
// cache or compiling: made on first use, one for the whole test binary, so
// the Go test module (megabytes, seconds to compile) is compiled once and
// not once a test. NewRuntime reclaims the leftover compiles of its cache
// directory, so tests on this one must not run in parallel.
var sharedCache struct {
	once sync.Once
	dir  string
	err  error
}

// TestMain removes the shared compile cache at the end. (A compiler
// process, this binary run again, never gets here: the package's init
// turns it into the compiler before any test code runs.)
func TestMain(m *testing.M) {
	code := m.Run()
	if sharedCache.dir != "" {
		os.RemoveAll(sharedCache.dir)
	}
	os.Exit(code)
}

// newRuntime is a runtime on the shared compile cache.
func newRuntime(t *testing.T) *Runtime {
	t.Helper()
	sharedCache.once.Do(func() { sharedCache.dir, sharedCache.err = os.MkdirTemp("", "wasmcri-wasm-test-cache-") })
	if sharedCache.err != nil {
		t.Fatal(sharedCache.err)
	}
	return newRuntimeIn(t, sharedCache.dir)
}

// newRuntimeIn is a runtime with its compile cache in dir: for tests of
// the cache or of compiling, which need a cache of their own.
func newRuntimeIn(t *testing.T, dir string) *Runtime {
	t.Helper()
	r, err := NewRuntime(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func prepare(t *testing.T, r *Runtime, module []byte) Compiled {
	t.Helper()
	c, err := r.Prepare(context.Background(), digest.FromBytes(module), func() ([]byte, error) { return module, nil })
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// run starts module with spec, its output captured, and returns the
// instance and its output.
func run(t *testing.T, r *Runtime, module []byte, spec Spec) (*Instance, *output) {
	t.Helper()
	out := &output{}
	spec.Stdout, spec.Stderr = &out.stdout, &out.stderr
	inst, err := r.Start(prepare(t, r, module), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Stop(); <-inst.Done() })
	return inst, out
}

func wait(t *testing.T, inst *Instance, within time.Duration) Result {
	t.Helper()
	select {
	case <-inst.Done():
		return inst.Result()
	case <-time.After(within):
		t.Fatalf("instance still running after %v", within)
		return Result{}
	}
}

// output is an instance's stdout and stderr, each kept apart.
type output struct{ stdout, stderr syncBuffer }

// syncBuffer is an output stream the test reads while the instance writes.
type syncBuffer struct{ syncbuf.Buffer }

// lines are the lines written so far, a last one without its newline
// left out.
func (b *syncBuffer) lines() []string {
	s := b.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return strings.Split(s[:i], "\n")
	}
	return nil
}

// has says whether a line of exactly text has been written.
func (b *syncBuffer) has(text string) bool { return slices.Contains(b.lines(), text) }

// waitOutput waits until stream has a line of exactly text.
func waitOutput(t *testing.T, stream *syncBuffer, text string) {
	t.Helper()
	if !poll(20*time.Second, func() bool { return stream.has(text) }) {
		t.Fatalf("the output never had the line %q:\n%s", text, stream.String())
	}
}

func TestRunGoModuleWithArgsEnvAndWorkingDir(t *testing.T) {
	r := newRuntime(t)
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "srv"), 0o755); err != nil {
		t.Fatal(err)
	}
	inst, out := run(t, r, testmodule.Hello(t), Spec{
		Args:       []string{"hello", "one", "two words"},
		Env:        []string{"GREETING=hi", "EMPTY="},
		WorkingDir: "/srv",
		Dirs:       []Dir{{Host: root, Guest: "/"}},
	})
	res := wait(t, inst, 10*time.Second)
	if res.ExitCode != 0 || res.Trap != "" || res.Stopped {
		t.Fatalf("result = %+v", res)
	}
	for _, want := range []struct {
		stream *syncBuffer
		text   string
	}{
		{&out.stdout, "Hello from WebAssembly!"},
		{&out.stdout, `args: ["hello" "one" "two words"]`},
		{&out.stdout, "env: GREETING=hi"},
		{&out.stdout, "env: EMPTY="},
		{&out.stdout, "cwd: /srv"},
		{&out.stderr, "this line went to stderr"},
	} {
		if !want.stream.has(want.text) {
			t.Errorf("line %q missing; stdout:\n%s\nstderr:\n%s", want.text, out.stdout.String(), out.stderr.String())
		}
	}
}

func TestExitCodeAndTrap(t *testing.T) {
	r := newRuntime(t)
	inst, out := run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello", "exit", "42"}})
	if res := wait(t, inst, 10*time.Second); res.ExitCode != 42 || res.Trap != "" {
		t.Fatalf("exit 42: result = %+v", res)
	}
	if !out.stderr.has("exiting with 42") {
		t.Errorf("stderr = %q", out.stderr.String())
	}

	inst, _ = run(t, r, testmodule.Wat(t, testmodule.Trap), Spec{Args: []string{"trap"}})
	res := wait(t, inst, 5*time.Second)
	if res.ExitCode != 1 || !strings.Contains(res.Trap, "unreachable") || strings.Contains(res.Trap, "\n") {
		t.Fatalf("trap: result = %+v", res)
	}

	inst, out = run(t, r, testmodule.Wat(t, testmodule.Print), Spec{Args: []string{"print"}})
	if res := wait(t, inst, 5*time.Second); res.ExitCode != 0 {
		t.Fatalf("print: result = %+v", res)
	}
	if out.stdout.String() != "hi from wat\n" || out.stderr.String() != "" {
		t.Errorf("print: stdout %q, stderr %q", out.stdout.String(), out.stderr.String())
	}
}

// Stop must end an instance whether it runs code or sleeps in the host,
// and must not touch any other instance.
func TestStopInterruptsOnlyItsInstance(t *testing.T) {
	r := newRuntime(t)
	hello := testmodule.Hello(t)
	bystander, bystanderOut := run(t, r, hello, Spec{Args: []string{"hello", "sleep-forever"}})
	for _, tc := range []struct {
		name   string
		module []byte
		args   []string
		// under way says when the instance is where the case wants it.
		underWay func(*Instance, *output) bool
	}{
		{"go-sleeping-in-poll_oneoff", hello, []string{"hello", "sleep-forever"},
			func(_ *Instance, out *output) bool { return out.stdout.has("tick 1") }},
		{"go-spinning", hello, []string{"hello", "spin"},
			func(_ *Instance, out *output) bool { return out.stdout.has("spinning") }},
		// It prints nothing: its thread's CPU time shows it in its loop.
		{"wat-spinning", testmodule.Wat(t, testmodule.Spin), []string{"spin"},
			func(inst *Instance, _ *output) bool { return inst.Stats().CPU > 20*time.Millisecond }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inst, out := run(t, r, tc.module, Spec{Args: tc.args})
			pollUntil(t, 20*time.Second, "the instance under way", func() bool { return tc.underWay(inst, out) })
			select {
			case <-inst.Done():
				t.Fatalf("ended before Stop: %+v", inst.Result())
			default:
			}
			start := time.Now()
			inst.Stop()
			res := wait(t, inst, 2*time.Second)
			if !res.Stopped || res.ExitCode != 137 {
				t.Fatalf("result = %+v", res)
			}
			t.Logf("stopped in %v", time.Since(start))
		})
	}
	select {
	case <-bystander.Done():
		t.Fatalf("stopping others ended the bystander: %+v", bystander.Result())
	default:
	}
	before := len(bystanderOut.stdout.lines())
	pollUntil(t, 10*time.Second, "the bystander ticking on", func() bool { return len(bystanderOut.stdout.lines()) > before })
}

func TestSleepKeepsTime(t *testing.T) {
	r := newRuntime(t)
	_, out := run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello", "sleep-forever"}})
	// Ten 100ms sleeps lie between tick 0 and tick 10: at least a second,
	// however busy the machine, where sleeps that returned at once would
	// take a few milliseconds. Half of it leaves room for seeing tick 0
	// late; how late tick 10 comes depends on the machine and is only logged.
	pollUntil(t, 20*time.Second, "tick 0", func() bool { return out.stdout.has("tick 0") })
	start := time.Now()
	pollUntil(t, 20*time.Second, "tick 10", func() bool { return out.stdout.has("tick 10") })
	took := time.Since(start)
	t.Logf("ten 100ms sleeps took %v", took)
	if took < 500*time.Millisecond {
		t.Fatalf("ten 100ms sleeps took %v:\n%s", took, out.stdout.String())
	}
}

func TestCompileCache(t *testing.T) {
	dir := t.TempDir()
	module := testmodule.Wat(t, testmodule.Print)
	r := newRuntimeIn(t, dir)
	if c := prepare(t, r, module); !c.Fresh {
		t.Fatal("first Prepare did not compile")
	}
	if c := prepare(t, r, module); c.Fresh {
		t.Fatal("second Prepare compiled again")
	}
	r2 := newRuntimeIn(t, dir)
	c := prepare(t, r2, module)
	if c.Fresh {
		t.Fatal("a new runtime over the same cache compiled again")
	}
	if !strings.Contains(c.Path, "wasmtime-"+WasmtimeVersion) {
		t.Errorf("cache path %s is not keyed by wasmtime version", c.Path)
	}

	// A corrupt cache entry is dropped and compiled again, not fatal.
	if err := os.WriteFile(c.Path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Start(c, Spec{}); err == nil {
		t.Fatal("started from a corrupt cache file")
	}
	if c := prepare(t, r2, module); !c.Fresh {
		t.Fatal("corrupt entry was not recompiled")
	}

	_, err := r.Prepare(context.Background(), digest.FromBytes([]byte("x")), func() ([]byte, error) { return []byte("\x00asm\x01\x00\x00\x00\xff"), nil })
	if err == nil || !strings.Contains(err.Error(), "content is") {
		t.Fatalf("digest mismatch not caught: %v", err)
	}
	bad := []byte("\x00asm\x01\x00\x00\x00\xff")
	_, err = r.Prepare(context.Background(), digest.FromBytes(bad), func() ([]byte, error) { return bad, nil })
	if !errors.Is(err, ErrInvalidModule) {
		t.Fatalf("malformed module: %v", err)
	}
}

func TestStartRefusesWhatCannotRun(t *testing.T) {
	r := newRuntime(t)
	for name, tc := range map[string]struct{ wat, says string }{
		"no _start":      {testmodule.NoStart, "_start"},
		"unknown import": {testmodule.UnknownImport, "launch_missiles"},
		"import of the wrong type": {`(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")))`, "incompatible import type for `wasi_snapshot_preview1::fd_write`"},
		"import of a memory":     {`(module (import "env" "memory" (memory 1)) (func (export "_start")))`, "env::memory"},
		"_start with parameters": {`(module (memory (export "memory") 1) (func (export "_start") (param i32)))`, "not a func () -> ()"},
		// Refused before its start section could run.
		"unknown import and a start section": {`(module
  (import "env" "launch_missiles" (func))
  (func $spin (loop (br 0)))
  (start $spin)
  (func (export "_start")))`, "launch_missiles"},
	} {
		module := testmodule.Wat(t, tc.wat)
		_, err := r.Start(prepare(t, r, module), Spec{})
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestWasmtimeVersionMatchesGoMod(t *testing.T) {
	b, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	want := "github.com/bytecodealliance/wasmtime-go/v39 v" + WasmtimeVersion
	if !strings.Contains(string(b), want) {
		t.Fatalf("go.mod does not require %s: update WasmtimeVersion", want)
	}
}

func TestStdin(t *testing.T) {
	r := newRuntime(t)
	inst, out := run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello", "echo-stdin"}, Stdin: strings.NewReader("line one\nline two\n")})
	if res := wait(t, inst, 10*time.Second); res.ExitCode != 0 {
		t.Fatalf("result = %+v", res)
	}
	if out.stdout.String() != "line one\nline two\n" || out.stderr.String() != "" {
		t.Fatalf("echoed %q, stderr %q", out.stdout.String(), out.stderr.String())
	}

	// A module blocked reading a stdin that never ends still stops. The
	// line it echoes shows it reading; it then blocks for the next.
	pr, pw := io.Pipe()
	defer pw.Close()
	inst, out = run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello", "echo-stdin"}, Stdin: pr})
	go pw.Write([]byte("first line\n"))
	waitOutput(t, &out.stdout, "first line")
	inst.Stop()
	if res := wait(t, inst, 2*time.Second); !res.Stopped || res.ExitCode != 137 {
		t.Fatalf("stopped while reading stdin: %+v", res)
	}
}

func TestStatsReportCPUAndMemory(t *testing.T) {
	r := newRuntime(t)
	hello := testmodule.Hello(t)
	holder, holderOut := run(t, r, hello, Spec{Args: []string{"hello", "alloc", "20"}})
	spinner, _ := run(t, r, hello, Spec{Args: []string{"hello", "spin"}})
	waitOutput(t, &holderOut.stdout, "holding 20 MiB")
	// Memory is sampled at host calls: the sleep that follows the line.
	pollUntil(t, 20*time.Second, "the holder's memory sampled", func() bool { return holder.Stats().MemoryBytes >= 20<<20 })
	if st := holder.Stats(); st.MemoryBytes > 64<<20 {
		t.Errorf("holder memory = %d bytes, want about 20 MiB", st.MemoryBytes)
	}
	// Any share of a loaded machine is some CPU, so the spinner's moves;
	// over the same while, the sleeping holder's hardly does.
	h1, st1 := holder.Stats(), spinner.Stats()
	var st2 Stats
	pollUntil(t, 30*time.Second, "the spinner using 200ms of CPU", func() bool {
		st2 = spinner.Stats()
		return st2.CPU-st1.CPU >= 200*time.Millisecond
	})
	spun, idle := st2.CPU-st1.CPU, holder.Stats().CPU-h1.CPU
	t.Logf("while the spinner used %v of CPU, the sleeping holder used %v", spun, idle)
	if idle > spun/4 {
		t.Errorf("a sleeping instance used %v of CPU while a spinning one used %v", idle, spun)
	}
	spinner.Stop()
	wait(t, spinner, 2*time.Second)
	final := spinner.Stats()
	// That nothing moves after the end can only be looked at for a while:
	// a longer look proves more, a busy machine cannot fail a short one.
	time.Sleep(100 * time.Millisecond)
	if later := spinner.Stats(); later.CPU != final.CPU || final.CPU < st2.CPU {
		t.Errorf("CPU after exit moved: %v then %v (was %v running)", final.CPU, later.CPU, st2.CPU)
	}
}

func TestMemoryLimitIsOOMAndOnlyForItsInstance(t *testing.T) {
	r := newRuntime(t)
	hello := testmodule.Hello(t)
	limited, _ := run(t, r, hello, Spec{Args: []string{"hello", "alloc", "100"}, Limits: Limits{MemoryBytes: 32 << 20}})
	free, freeOut := run(t, r, hello, Spec{Args: []string{"hello", "alloc", "100"}})
	res := wait(t, limited, 20*time.Second)
	if !res.OOM || res.ExitCode != 137 {
		t.Fatalf("over its limit: %+v", res)
	}
	waitOutput(t, &freeOut.stdout, "holding 100 MiB")
	select {
	case <-free.Done():
		t.Fatalf("the unlimited neighbour ended: %+v", free.Result())
	default:
	}

	// One allocation far over the limit fails far below it: the language
	// runtime's report tells it apart from another failure.
	inst, _ := run(t, r, hello, Spec{Args: []string{"hello", "alloc-once", "64"}, Limits: Limits{MemoryBytes: 32 << 20}})
	if res := wait(t, inst, 10*time.Second); !res.OOM || res.ExitCode != 137 {
		t.Fatalf("one allocation over the limit: %+v", res)
	}

	// A module failing far below its limit is no OOM.
	inst, _ = run(t, r, hello, Spec{Args: []string{"hello", "exit", "2"}, Limits: Limits{MemoryBytes: 256 << 20}})
	if res := wait(t, inst, 10*time.Second); res.OOM || res.ExitCode != 2 {
		t.Fatalf("plain failure under a limit: %+v", res)
	}

	// A limit set while running applies from the next host call.
	inst, out := run(t, r, hello, Spec{Args: []string{"hello", "alloc-slowly"}})
	waitOutput(t, &out.stdout, "holding 20 MiB")
	if err := inst.SetLimits(Limits{MemoryBytes: 48 << 20}); err != nil {
		t.Fatal(err)
	}
	res = wait(t, inst, 20*time.Second)
	if !res.OOM {
		t.Fatalf("after lowering the limit: %+v", res)
	}
	if out.stdout.has("holding 60 MiB") {
		t.Fatalf("the module passed its new limit:\n%s", out.stdout.String())
	}
}

func TestCPUQuotaThrottles(t *testing.T) {
	r := newRuntime(t)
	if r.CPUCapsUnavailable != nil {
		t.Skipf("no cgroup cpu controller here: %v", r.CPUCapsUnavailable)
	}
	hello := testmodule.Hello(t)
	capped, _ := run(t, r, hello, Spec{ID: cgroupID(t, "capped"), Args: []string{"hello", "spin"}, Limits: Limits{CPUQuota: 20000, CPUPeriod: 100000}})
	free, _ := run(t, r, hello, Spec{ID: cgroupID(t, "free"), Args: []string{"hello", "spin"}})
	checkCPUCap(t, r, capped, free)
	cgroup := filepath.Join(r.cpu.root, cgroupID(t, "capped"))
	if got := threadCgroup(t, free.tid); strings.Contains(got, "wasmcri") {
		t.Errorf("uncapped neighbour's thread is in cgroup %q", got)
	}
	// The cap holds the instance's thread alone: no thread it spawned (as
	// wasmtime's shared WASI threads) stays throttled with it.
	if b, err := os.ReadFile(filepath.Join(cgroup, "tasks")); err != nil || len(strings.Fields(string(b))) != 1 {
		t.Errorf("capped cgroup tasks: %q, %v", b, err)
	}
	// Lifting the cap returns the thread to the daemon's cgroup.
	if err := capped.SetLimits(Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := threadCgroup(t, capped.tid); strings.Contains(got, "wasmcri") {
		t.Errorf("after lifting the cap the thread is in %q", got)
	}
	if _, err := os.Stat(cgroup); !os.IsNotExist(err) {
		t.Errorf("cgroup of a lifted cap still there: %v", err)
	}
}

// cgroupID is an instance ID for a test's capped (or uncapped) instance,
// which names its cgroup. Every runtime on the host keeps its caps in one
// cgroup directory, so the ID is this process's own: two test runs at once
// (two checkouts on one machine) would otherwise share the cgroup, each
// moving the other's thread out of it as a stray.
func cgroupID(t *testing.T, role string) string {
	return role + "-" + t.Name() + "-" + strconv.Itoa(os.Getpid())
}

// threadCgroup is the cpu cgroup of one of this process's threads.
func threadCgroup(t *testing.T, tid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && strings.Contains(","+parts[1]+",", ",cpu,") {
			return parts[2]
		}
	}
	return ""
}

// checkCPUCap measures a capped (20%) and an uncapped instance, both
// spinning, over a window of a second or more: as long as it takes the
// uncapped one to get clearly more CPU than the capped one, which on a busy
// machine is longer. The cap is then checked against the window's own wall
// time, so neither load nor a late wake-up can fail it.
func checkCPUCap(t *testing.T, r *Runtime, capped, free *Instance) {
	t.Helper()
	c0, f0, start := capped.Stats().CPU, free.Stats().CPU, time.Now()
	var c, f, window time.Duration
	if !poll(30*time.Second, func() bool {
		c, f, window = capped.Stats().CPU-c0, free.Stats().CPU-f0, time.Since(start)
		return window >= time.Second && f >= c*3/2
	}) {
		t.Fatalf("in %v the uncapped instance used %v of CPU, hardly more than the capped one's %v", window, f, c)
	}
	t.Logf("in %v: capped at 20%% used %v, uncapped %v", window, c, f)
	// 20% of the window, with room for the period under way and the
	// kernel's accounting.
	if c > window*35/100 {
		t.Errorf("capped instance used %v of CPU in %v at a 20%% quota", c, window)
	}
	if got, want := threadCgroup(t, capped.tid), strings.TrimPrefix(filepath.Join(r.cpu.root, capped.id), "/sys/fs/cgroup/cpu"); got != want {
		t.Errorf("capped thread is in cgroup %q, want %q", got, want)
	}
}
