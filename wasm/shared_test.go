package wasm

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// running fails the test if inst has ended.
func running(t *testing.T, inst *Instance, what string) {
	t.Helper()
	select {
	case <-inst.Done():
		t.Fatalf("%s ended: %+v", what, inst.Result())
	default:
	}
}

// progresses waits until inst has used more CPU than it had: a running
// instance's thread spinning in wasm code.
func progresses(t *testing.T, inst *Instance, what string) {
	t.Helper()
	from := inst.Stats().CPU
	pollUntil(t, 10*time.Second, what+" using CPU", func() bool { return inst.Stats().CPU > from+20*time.Millisecond })
	running(t, inst, what)
}

// stopNow stops inst and checks it ends promptly, as stopped.
func stopNow(t *testing.T, inst *Instance, what string) {
	t.Helper()
	start := time.Now()
	inst.Stop()
	res := wait(t, inst, 2*time.Second)
	if !res.Stopped || res.ExitCode != 137 || res.Trap != "" || res.StartError != "" {
		t.Fatalf("%s: result = %+v", what, res)
	}
	t.Logf("%s stopped in %v", what, time.Since(start))
}

// loadedOf is the loaded module an instance runs and its reference count.
func loadedOf(r *Runtime, inst *Instance) (*loaded, int) {
	r.modsMu.Lock()
	defer r.modsMu.Unlock()
	return inst.ld, inst.ld.refs
}

// Instances of a module run on one engine and one loaded module; stopping
// any of them, whether it spins in wasm code, in its start section, sleeps
// in poll_oneoff or reads its stdin, ends it alone: the others go on.
func TestStopOneOfInstancesSharingAModule(t *testing.T) {
	r := newRuntime(t)

	t.Run("spinning", func(t *testing.T) {
		spin := testmodule.Wat(t, testmodule.Spin)
		var insts []*Instance
		for range 3 {
			inst, _ := run(t, r, spin, Spec{Args: []string{"spin"}})
			insts = append(insts, inst)
		}
		for _, inst := range insts {
			progresses(t, inst, "a spinner")
		}
		if insts[0].ld != insts[1].ld || insts[1].ld != insts[2].ld || insts[0].engine != insts[2].engine {
			t.Fatal("instances of one module do not share its loaded module and engine")
		}
		stopNow(t, insts[1], "the second spinner")
		progresses(t, insts[0], "the first spinner")
		progresses(t, insts[2], "the third spinner")
		stopNow(t, insts[0], "the first spinner")
		progresses(t, insts[2], "the third spinner")
		stopNow(t, insts[2], "the third spinner")
	})

	t.Run("start-section", func(t *testing.T) {
		c := prepare(t, r, testmodule.Wat(t, testmodule.StartSpin))
		a := startWithin(t, r, c, Spec{Args: []string{"a"}}, 10*time.Second)
		b := startWithin(t, r, c, Spec{Args: []string{"b"}}, 10*time.Second)
		progresses(t, a, "a start section")
		progresses(t, b, "another start section")
		stopNow(t, a, "a start section")
		progresses(t, b, "the other start section")
		stopNow(t, b, "the other start section")
	})

	t.Run("sleeping-spinning-reading", func(t *testing.T) {
		hello := testmodule.Hello(t)
		sleeper, sleeperOut := run(t, r, hello, Spec{Args: []string{"hello", "sleep-forever"}})
		spinner, _ := run(t, r, hello, Spec{Args: []string{"hello", "spin"}})
		stdin, stdinW := io.Pipe()
		defer stdinW.Close()
		reader, readerOut := run(t, r, hello, Spec{Args: []string{"hello", "echo-stdin"}, Stdin: stdin})
		if sleeper.ld != spinner.ld || spinner.ld != reader.ld {
			t.Fatal("instances of one module do not share its loaded module")
		}
		waitOutput(t, &sleeperOut.stdout, "tick 1")
		progresses(t, spinner, "the spinner")
		if _, err := io.WriteString(stdinW, "echo one\n"); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, &readerOut.stdout, "echo one")

		// The sleeper, waiting in poll_oneoff: the spinner spins on, the
		// reader still echoes.
		stopNow(t, sleeper, "the sleeper")
		progresses(t, spinner, "the spinner")
		if _, err := io.WriteString(stdinW, "echo two\n"); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, &readerOut.stdout, "echo two")

		// The reader, blocked reading stdin.
		stopNow(t, reader, "the reader")
		progresses(t, spinner, "the spinner")

		// A new sleeper ticks while the spinner is stopped, and after.
		sleeper2, sleeper2Out := run(t, r, hello, Spec{Args: []string{"hello", "sleep-forever"}})
		waitOutput(t, &sleeper2Out.stdout, "tick 1")
		stopNow(t, spinner, "the spinner")
		ticks := len(sleeper2Out.stdout.lines())
		pollUntil(t, 10*time.Second, "the second sleeper ticking on", func() bool { return len(sleeper2Out.stdout.lines()) > ticks+2 })
		stopNow(t, sleeper2, "the second sleeper")
	})
}

// The instances of a module hold its one loaded module; another module is
// another loaded module; the runtime's reference stays when they end.
func TestInstancesShareOneLoadedModule(t *testing.T) {
	r := newRuntime(t)
	spin := testmodule.Wat(t, testmodule.Spin)
	c := prepare(t, r, spin)
	var insts []*Instance
	for range 4 {
		inst, _ := run(t, r, spin, Spec{Args: []string{"spin"}})
		insts = append(insts, inst)
	}
	ld, refs := loadedOf(r, insts[0])
	if refs != 1+len(insts) {
		t.Errorf("the loaded module has %d references with %d instances running", refs, len(insts))
	}
	for _, inst := range insts[1:] {
		if other, _ := loadedOf(r, inst); other != ld {
			t.Fatal("two instances of one module have loaded it each")
		}
	}
	r.modsMu.Lock()
	inMap := r.mods[c.Path]
	r.modsMu.Unlock()
	if inMap != ld {
		t.Fatal("the runtime does not hold the instances' loaded module")
	}

	printer, _ := run(t, r, testmodule.Wat(t, testmodule.Print), Spec{Args: []string{"print"}})
	if other, _ := loadedOf(r, printer); other == ld {
		t.Fatal("another module runs on the same loaded module")
	}

	for _, inst := range insts {
		inst.Stop()
		wait(t, inst, 2*time.Second)
	}
	if _, refs := loadedOf(r, insts[0]); refs != 1 {
		t.Errorf("the loaded module has %d references with no instance running, want the runtime's 1", refs)
	}
	inst, _ := run(t, r, spin, Spec{Args: []string{"spin"}})
	if again, _ := loadedOf(r, inst); again != ld {
		t.Error("a new instance loaded the module again")
	}
}

// sleepThenPrint sleeps 300ms in poll_oneoff, then prints "slept" and
// exits 0: an instance that ends by itself a little after it starts.
const sleepThenPrint = `(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "slept\n")
  (func (export "_start")
    ;; one clock subscription: tag 0, relative timeout of 300ms
    (i64.store (i32.const 24) (i64.const 300000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (i32.store (i32.const 192) (i32.const 256))
    (i32.store (i32.const 196) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 192) (i32.const 1) (i32.const 200)))))`

// Forget drops the runtime's loaded module while instances run: they end
// as they would have, the last of them closes it, and the module starts
// again after a new Prepare.
func TestForgetWhileInstancesRun(t *testing.T) {
	// A cache of its own: Forget removes the compiled file.
	r := newRuntimeIn(t, t.TempDir())
	module := testmodule.Wat(t, sleepThenPrint)
	c := prepare(t, r, module)
	a, aOut := run(t, r, module, Spec{Args: []string{"a"}})
	b, bOut := run(t, r, module, Spec{Args: []string{"b"}})
	ld, _ := loadedOf(r, a)
	if err := r.Forget(c.Digest); err != nil {
		t.Fatal(err)
	}
	r.modsMu.Lock()
	_, kept := r.mods[c.Path]
	r.modsMu.Unlock()
	if kept {
		t.Fatal("the runtime still holds a forgotten module")
	}
	if _, refs := loadedOf(r, a); refs != 2 {
		t.Errorf("a forgotten module has %d references with 2 instances running", refs)
	}
	for _, tc := range []struct {
		inst *Instance
		out  *output
	}{{a, aOut}, {b, bOut}} {
		if res := wait(t, tc.inst, 5*time.Second); res.ExitCode != 0 || res.Stopped || res.Trap != "" {
			t.Fatalf("an instance of a forgotten module: %+v", res)
		}
		if s := tc.out.stdout.String(); s != "slept\n" {
			t.Errorf("stdout %q", s)
		}
	}
	if _, refs := loadedOf(r, a); refs != 0 {
		t.Errorf("a forgotten module has %d references after its instances ended", refs)
	}

	if _, err := r.Start(c, Spec{Args: []string{"c"}}); err == nil {
		t.Fatal("started a forgotten module without preparing it again")
	}
	c = prepare(t, r, module)
	if !c.Fresh {
		t.Error("a forgotten module was not compiled again")
	}
	inst, out := run(t, r, module, Spec{Args: []string{"c"}})
	if res := wait(t, inst, 5*time.Second); res.ExitCode != 0 || out.stdout.String() != "slept\n" {
		t.Fatalf("after a new Prepare: %+v, stdout %q", res, out.stdout.String())
	}
	if again, _ := loadedOf(r, inst); again == ld {
		t.Error("a new instance runs on the closed loaded module")
	}
}

// Instances running when the runtime closes keep its engine and their
// loaded module until they end; the runtime starts nothing more.
func TestCloseWhileInstancesRun(t *testing.T) {
	r, err := NewRuntime(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	spin := testmodule.Wat(t, testmodule.Spin)
	a, _ := run(t, r, spin, Spec{Args: []string{"a"}})
	b, _ := run(t, r, spin, Spec{Args: []string{"b"}})
	progresses(t, a, "a spinner")
	r.Close()
	progresses(t, b, "a spinner after Close")
	stopNow(t, a, "a spinner after Close")
	progresses(t, b, "the other spinner after Close")
	stopNow(t, b, "the other spinner after Close")
	if _, err := r.Start(prepare(t, r, spin), Spec{}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Start after Close: %v", err)
	}
}

// A Forget that comes while the module's first start loads it is not
// undone by the load: the start fails (the compiled file is gone) and the
// runtime keeps nothing of the module.
func TestForgetDuringFirstLoad(t *testing.T) {
	r := newRuntimeIn(t, t.TempDir())
	module := testmodule.Wat(t, sleepThenPrint)
	c := prepare(t, r, module)
	r.afterLoad = func(Compiled) {
		r.afterLoad = nil
		if err := r.Forget(c.Digest); err != nil {
			t.Error(err)
		}
	}
	if inst, err := r.Start(c, Spec{Args: []string{"a"}}); err == nil {
		inst.Stop()
		<-inst.Done()
		t.Fatal("started a module forgotten while it loaded")
	}
	r.modsMu.Lock()
	n, users := len(r.mods), r.engineUsers
	r.modsMu.Unlock()
	if n != 0 || users != 0 {
		t.Fatalf("the runtime keeps %d loaded modules, %d engine users", n, users)
	}
	inst, out := run(t, r, module, Spec{Args: []string{"b"}})
	if res := wait(t, inst, 5*time.Second); res.ExitCode != 0 || out.stdout.String() != "slept\n" {
		t.Fatalf("after a new Prepare: %+v, stdout %q", res, out.stdout.String())
	}
}
