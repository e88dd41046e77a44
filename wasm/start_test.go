package wasm

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// startPrintThenSpin's start section writes "start ran" to stdout, then
// loops forever.
const startPrintThenSpin = `(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "start ran\n")
  (func $start
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 10))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop (br 0)))
  (start $start)
  (func (export "_start")))`

// startWithin calls Start and fails the test if it does not return within
// d: a Start that runs module code may never return.
func startWithin(t *testing.T, r *Runtime, c Compiled, spec Spec, d time.Duration) *Instance {
	t.Helper()
	type started struct {
		inst *Instance
		err  error
	}
	ch := make(chan started, 1)
	go func() {
		inst, err := r.Start(c, spec)
		ch <- started{inst, err}
	}()
	select {
	case s := <-ch:
		if s.err != nil {
			t.Fatal(s.err)
		}
		t.Cleanup(func() { s.inst.Stop(); <-s.inst.Done() })
		return s.inst
	case <-time.After(d):
		// The goroutine is stuck in module code: nothing can end it.
		t.Fatalf("Start did not return within %v", d)
		return nil
	}
}

// poll polls cond until it holds, and says whether it did within d.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// pollUntil polls cond until it holds, and fails the test if it does not
// within d.
func pollUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(d, cond) {
		t.Fatalf("%s: not within %v", what, d)
	}
}

func TestStartSectionThatNeverReturnsIsStoppable(t *testing.T) {
	r := newRuntime(t)
	c := prepare(t, r, testmodule.Wat(t, testmodule.StartSpin))
	inst := startWithin(t, r, c, Spec{Args: []string{"spin"}}, 10*time.Second)
	// Running: its thread burns CPU in the start section.
	pollUntil(t, 10*time.Second, "start section using CPU", func() bool { return inst.Stats().CPU > 20*time.Millisecond })
	select {
	case <-inst.Done():
		t.Fatalf("ended before Stop: %+v", inst.Result())
	default:
	}
	inst.Stop()
	if res := wait(t, inst, 5*time.Second); !res.Stopped || res.ExitCode != 137 || res.StartError != "" {
		t.Fatalf("result = %+v", res)
	}
}

// A Stop that comes before the instance's thread instantiates the module
// ends it with none of the module's code run. The same module, not
// stopped, shows the start section's output reaches stdout.
func TestStopBeforeInstantiationRunsNothing(t *testing.T) {
	r := newRuntime(t)
	c := prepare(t, r, testmodule.Wat(t, startPrintThenSpin))
	arrived, release := make(chan *Instance, 1), make(chan struct{})
	r.beforeInstantiate = func(i *Instance) {
		arrived <- i
		<-release
	}

	// Stopped while its thread waits to instantiate.
	var out syncBuffer
	inst := startWithin(t, r, c, Spec{Args: []string{"x"}, Stdout: &out}, 10*time.Second)
	if got := <-arrived; got != inst {
		t.Fatal("another instance reached instantiation")
	}
	inst.Stop()
	release <- struct{}{}
	if res := wait(t, inst, 5*time.Second); !res.Stopped || res.ExitCode != 137 {
		t.Fatalf("stopped before instantiation: result = %+v", res)
	}
	if s := out.String(); s != "" {
		t.Fatalf("the start section ran after Stop: stdout %q", s)
	}

	// Not stopped: the start section runs and writes, then is stopped.
	var out2 syncBuffer
	inst = startWithin(t, r, c, Spec{Args: []string{"x"}, Stdout: &out2}, 10*time.Second)
	<-arrived
	release <- struct{}{}
	pollUntil(t, 10*time.Second, "start section output", func() bool { return out2.String() == "start ran\n" })
	inst.Stop()
	if res := wait(t, inst, 5*time.Second); !res.Stopped || res.ExitCode != 137 {
		t.Fatalf("stopped in the start section: result = %+v", res)
	}
}

// The CPU cap holds the start section: a capped instance spinning there
// gets its quota, an uncapped one more.
func TestCPUCapAppliesToStartSection(t *testing.T) {
	r := newRuntime(t)
	if r.CPUCapsUnavailable != nil {
		t.Skipf("no cgroup cpu controller here: %v", r.CPUCapsUnavailable)
	}
	c := prepare(t, r, testmodule.Wat(t, testmodule.StartSpin))
	capped := startWithin(t, r, c, Spec{ID: cgroupID(t, "capped"), Limits: Limits{CPUQuota: 20000, CPUPeriod: 100000}}, 10*time.Second)
	free := startWithin(t, r, c, Spec{ID: cgroupID(t, "free")}, 10*time.Second)
	checkCPUCap(t, r, capped, free)
	for _, inst := range []*Instance{capped, free} {
		inst.Stop()
		if res := wait(t, inst, 5*time.Second); !res.Stopped {
			t.Errorf("result = %+v", res)
		}
	}
}

// What the start section does ends the instance as _start doing it would;
// a module whose initial memory is over its limit is out of memory.
func TestStartSectionOutcomesAreResults(t *testing.T) {
	r := newRuntime(t)
	for _, tc := range []struct {
		name, wat string
		limits    Limits
		check     func(Result) bool
	}{
		{"trap", `(module (memory (export "memory") 1) (func $s unreachable) (start $s) (func (export "_start")))`, Limits{},
			func(res Result) bool {
				return res.ExitCode == 1 && strings.Contains(res.Trap, "unreachable") && !res.OOM && res.StartError == ""
			}},
		{"proc_exit", `(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $s (call $exit (i32.const 3)))
  (start $s)
  (func (export "_start") unreachable))`, Limits{},
			func(res Result) bool { return res.ExitCode == 3 && res.Trap == "" && res.StartError == "" }},
		{"data out of bounds", `(module (memory (export "memory") 1) (data (i32.const 70000) "x") (func (export "_start")))`, Limits{},
			func(res Result) bool { return res.ExitCode == 1 && strings.Contains(res.Trap, "out of bounds") }},
		{"initial memory over the limit", `(module (memory (export "memory") 100) (func (export "_start")))`, Limits{MemoryBytes: 1 << 20},
			func(res Result) bool { return res.OOM && res.ExitCode == 137 && res.StartError == "" }},
		// 1 MiB leaves the table 64 KiB: 8192 elements.
		{"initial table over the limit", `(module (memory (export "memory") 1) (table 10000 funcref) (func (export "_start")))`, Limits{MemoryBytes: 1 << 20},
			func(res Result) bool { return res.OOM && res.ExitCode == 137 && strings.Contains(res.Trap, "table") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inst := startWithin(t, r, prepare(t, r, testmodule.Wat(t, tc.wat)), Spec{Args: []string{"x"}, Limits: tc.limits}, 10*time.Second)
			if res := wait(t, inst, 10*time.Second); !tc.check(res) {
				t.Fatalf("result = %+v", res)
			}
		})
	}
}

// An instantiation error that is neither the module's doing nor a limit
// is a StartError result, for the caller to report as a failure to start.
func TestInstantiationErrorIsStartError(t *testing.T) {
	engine := wasmtime.NewEngine()
	defer engine.Close()
	module, err := wasmtime.NewModule(engine, testmodule.Wat(t, testmodule.UnknownImport))
	if err != nil {
		t.Fatal(err)
	}
	defer module.Close()
	store := wasmtime.NewStore(engine)
	defer store.Close()
	linker := wasmtime.NewLinker(engine)
	defer linker.Close()
	_, err = linker.Instantiate(store, module)
	if err == nil {
		t.Fatal("instantiated a module with an undefined import")
	}
	var werr *wasmtime.Error
	if !errors.As(err, &werr) {
		t.Fatalf("wasmtime returned %T", err)
	}
	res := (&Instance{}).instantiationResult(err)
	if res.ExitCode != 128 || !strings.Contains(res.StartError, "launch_missiles") || res.OOM || res.Stopped || res.Trap != "" {
		t.Fatalf("result = %+v", res)
	}
}
