package wasm

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

func newRuntime(t *testing.T, dir string) *Runtime {
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

// run starts module with args and returns the instance and its log path.
func run(t *testing.T, r *Runtime, module []byte, spec Spec) (*Instance, string) {
	t.Helper()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "logs", "0.log")
	l, err := OpenCRILog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	spec.Stdout, spec.Stderr = l.Stream("stdout"), l.Stream("stderr")
	inst, err := r.Start(prepare(t, r, module), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Stop(); <-inst.Done() })
	return inst, logPath
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

var logLine = regexp.MustCompile(`^(\S+) (stdout|stderr) ([FP]) (.*)$`)

// readLog parses a CRI log file into "stream text" lines, checking the
// format of every record.
func readLog(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		m := logLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("log line not in CRI format: %q", line)
		}
		if _, err := time.Parse(time.RFC3339Nano, m[1]); err != nil {
			t.Fatalf("log timestamp %q: %v", m[1], err)
		}
		out = append(out, m[2]+" "+m[3]+" "+m[4])
	}
	return out
}

func contains(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

func TestRunGoModuleWithArgsEnvAndWorkingDir(t *testing.T) {
	r := newRuntime(t, t.TempDir())
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "srv"), 0o755); err != nil {
		t.Fatal(err)
	}
	inst, logPath := run(t, r, testmodule.Hello(t), Spec{
		Args:       []string{"hello", "one", "two words"},
		Env:        []string{"GREETING=hi", "EMPTY="},
		WorkingDir: "/srv",
		Dirs:       []Dir{{Host: root, Guest: "/"}},
	})
	res := wait(t, inst, 10*time.Second)
	if res.ExitCode != 0 || res.Trap != "" || res.Stopped {
		t.Fatalf("result = %+v", res)
	}
	lines := readLog(t, logPath)
	for _, want := range []string{
		"stdout F Hello from WebAssembly!",
		`stdout F args: ["hello" "one" "two words"]`,
		"stdout F env: GREETING=hi",
		"stdout F env: EMPTY=",
		"stdout F cwd: /srv",
		"stderr F this line went to stderr",
	} {
		if !contains(lines, want) {
			t.Errorf("log lacks %q:\n%s", want, strings.Join(lines, "\n"))
		}
	}
}

func TestExitCodeAndTrap(t *testing.T) {
	r := newRuntime(t, t.TempDir())
	inst, logPath := run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello", "exit", "42"}})
	if res := wait(t, inst, 10*time.Second); res.ExitCode != 42 || res.Trap != "" {
		t.Fatalf("exit 42: result = %+v", res)
	}
	if lines := readLog(t, logPath); !contains(lines, "stderr F exiting with 42") {
		t.Errorf("log = %q", lines)
	}

	inst, _ = run(t, r, testmodule.Wat(t, testmodule.Trap), Spec{Args: []string{"trap"}})
	res := wait(t, inst, 5*time.Second)
	if res.ExitCode != 1 || !strings.Contains(res.Trap, "unreachable") || strings.Contains(res.Trap, "\n") {
		t.Fatalf("trap: result = %+v", res)
	}

	inst, logPath = run(t, r, testmodule.Wat(t, testmodule.Print), Spec{Args: []string{"print"}})
	if res := wait(t, inst, 5*time.Second); res.ExitCode != 0 {
		t.Fatalf("print: result = %+v", res)
	}
	if lines := readLog(t, logPath); len(lines) != 1 || lines[0] != "stdout F hi from wat" {
		t.Errorf("print log = %q", lines)
	}
}

// Stop must end an instance whether it runs code or sleeps in the host,
// and must not touch any other instance.
func TestStopInterruptsOnlyItsInstance(t *testing.T) {
	r := newRuntime(t, t.TempDir())
	hello := testmodule.Hello(t)
	bystander, bystanderLog := run(t, r, hello, Spec{Args: []string{"hello", "sleep-forever"}})
	for _, tc := range []struct {
		name   string
		module []byte
		args   []string
	}{
		{"go-sleeping-in-poll_oneoff", hello, []string{"hello", "sleep-forever"}},
		{"go-spinning", hello, []string{"hello", "spin"}},
		{"wat-spinning", testmodule.Wat(t, testmodule.Spin), []string{"spin"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inst, _ := run(t, r, tc.module, Spec{Args: tc.args})
			time.Sleep(300 * time.Millisecond)
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
	before := len(readLog(t, bystanderLog))
	time.Sleep(300 * time.Millisecond)
	if after := len(readLog(t, bystanderLog)); after <= before {
		t.Fatalf("bystander stopped ticking: %d -> %d lines", before, after)
	}
}

func TestSleepKeepsTime(t *testing.T) {
	r := newRuntime(t, t.TempDir())
	inst, logPath := run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello", "sleep-forever"}})
	time.Sleep(time.Second)
	inst.Stop()
	wait(t, inst, 2*time.Second)
	// 100ms ticks for a second: about 10, never a busy loop's thousands.
	if n := len(readLog(t, logPath)); n < 3 || n > 15 {
		t.Fatalf("%d ticks in one second of 100ms sleeps", n)
	}
}

func TestCompileCache(t *testing.T) {
	dir := t.TempDir()
	module := testmodule.Wat(t, testmodule.Print)
	r := newRuntime(t, dir)
	if c := prepare(t, r, module); !c.Fresh {
		t.Fatal("first Prepare did not compile")
	}
	if c := prepare(t, r, module); c.Fresh {
		t.Fatal("second Prepare compiled again")
	}
	r2 := newRuntime(t, dir)
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
	r := newRuntime(t, t.TempDir())
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
	r := newRuntime(t, t.TempDir())
	inst, logPath := run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello", "echo-stdin"}, Stdin: strings.NewReader("line one\nline two\n")})
	if res := wait(t, inst, 10*time.Second); res.ExitCode != 0 {
		t.Fatalf("result = %+v", res)
	}
	if lines := readLog(t, logPath); strings.Join(lines, "|") != "stdout F line one|stdout F line two" {
		t.Fatalf("echoed %q", lines)
	}

	// A module blocked reading a stdin that never ends still stops.
	pr, pw := io.Pipe()
	defer pw.Close()
	inst, _ = run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello", "echo-stdin"}, Stdin: pr})
	time.Sleep(300 * time.Millisecond)
	inst.Stop()
	if res := wait(t, inst, 2*time.Second); !res.Stopped || res.ExitCode != 137 {
		t.Fatalf("stopped while reading stdin: %+v", res)
	}
}

func TestStatsReportCPUAndMemory(t *testing.T) {
	r := newRuntime(t, t.TempDir())
	hello := testmodule.Hello(t)
	holder, holderLog := run(t, r, hello, Spec{Args: []string{"hello", "alloc", "20"}})
	spinner, _ := run(t, r, hello, Spec{Args: []string{"hello", "spin"}})
	waitLog(t, holderLog, "holding 20 MiB")
	time.Sleep(500 * time.Millisecond)
	if st := holder.Stats(); st.MemoryBytes < 20<<20 || st.MemoryBytes > 64<<20 {
		t.Errorf("holder memory = %d bytes, want about 20 MiB", st.MemoryBytes)
	}
	st1 := spinner.Stats()
	time.Sleep(300 * time.Millisecond)
	st2 := spinner.Stats()
	// Any share of a loaded machine is some CPU; an idle one is none.
	if d := st2.CPU - st1.CPU; d < 20*time.Millisecond {
		t.Errorf("a spinning instance used %v CPU in 300ms", d)
	}
	if idle := holder.Stats().CPU; idle > time.Second {
		t.Errorf("an idle instance used %v CPU", idle)
	}
	spinner.Stop()
	wait(t, spinner, 2*time.Second)
	final := spinner.Stats()
	time.Sleep(100 * time.Millisecond)
	if later := spinner.Stats(); later.CPU != final.CPU || final.CPU < st2.CPU {
		t.Errorf("CPU after exit moved: %v then %v (was %v running)", final.CPU, later.CPU, st2.CPU)
	}
}

func TestMemoryLimitIsOOMAndOnlyForItsInstance(t *testing.T) {
	r := newRuntime(t, t.TempDir())
	hello := testmodule.Hello(t)
	limited, _ := run(t, r, hello, Spec{Args: []string{"hello", "alloc", "100"}, Limits: Limits{MemoryBytes: 32 << 20}})
	free, freeLog := run(t, r, hello, Spec{Args: []string{"hello", "alloc", "100"}})
	res := wait(t, limited, 20*time.Second)
	if !res.OOM || res.ExitCode != 137 {
		t.Fatalf("over its limit: %+v", res)
	}
	waitLog(t, freeLog, "holding 100 MiB")
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
	inst, logPath := run(t, r, hello, Spec{Args: []string{"hello", "alloc-slowly"}})
	waitLog(t, logPath, "holding 20 MiB")
	if err := inst.SetLimits(Limits{MemoryBytes: 48 << 20}); err != nil {
		t.Fatal(err)
	}
	res = wait(t, inst, 20*time.Second)
	if !res.OOM {
		t.Fatalf("after lowering the limit: %+v", res)
	}
	if lines := readLog(t, logPath); contains(lines, "stdout F holding 60 MiB") {
		t.Fatalf("the module passed its new limit:\n%s", strings.Join(lines, "\n"))
	}
}

func TestCPUQuotaThrottles(t *testing.T) {
	r := newRuntime(t, t.TempDir())
	if r.CPUCapsUnavailable != nil {
		t.Skipf("no cgroup cpu controller here: %v", r.CPUCapsUnavailable)
	}
	hello := testmodule.Hello(t)
	capped, _ := run(t, r, hello, Spec{ID: "capped-" + t.Name(), Args: []string{"hello", "spin"}, Limits: Limits{CPUQuota: 20000, CPUPeriod: 100000}})
	free, _ := run(t, r, hello, Spec{ID: "free-" + t.Name(), Args: []string{"hello", "spin"}})
	checkCPUCap(t, r, capped, free)
	cgroup := filepath.Join(r.cpu.root, "capped-"+t.Name())
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

// waitLog waits until the CRI log holds a stdout line with text.
func waitLog(t *testing.T, path, text string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), " stdout F "+text+"\n") {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(path)
			t.Fatalf("log never said %q:\n%s", text, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkCPUCap measures a capped (20%) and an uncapped instance over one
// second, both spinning. A cap holds under any load; what the uncapped one
// gets depends on the machine, so it is only compared with the capped one.
func checkCPUCap(t *testing.T, r *Runtime, capped, free *Instance) {
	t.Helper()
	c0, f0 := capped.Stats().CPU, free.Stats().CPU
	time.Sleep(time.Second) // the measurement window
	c, f := capped.Stats().CPU-c0, free.Stats().CPU-f0
	t.Logf("in 1s: capped at 20%% used %v, uncapped %v", c, f)
	if c > 350*time.Millisecond {
		t.Errorf("capped instance used %v of CPU in 1s at a 20%% quota", c)
	}
	if f < c*3/2 {
		t.Errorf("uncapped instance used %v, hardly more than the capped %v", f, c)
	}
	if got, want := threadCgroup(t, capped.tid), strings.TrimPrefix(filepath.Join(r.cpu.root, capped.id), "/sys/fs/cgroup/cpu"); got != want {
		t.Errorf("capped thread is in cgroup %q, want %q", got, want)
	}
}
