package wasm

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// BenchmarkStartTiny is one instance of a tiny cached module, start to
// exit, with its output pipes: what StartContainer pays in wasm. The
// streams go to discard, not nil (no pipes at all) and not a real log: the
// pipes and their copiers are the engine's cost, what the caller does with
// the bytes (the container log, in the sandbox) is not.
func BenchmarkStartTiny(b *testing.B) {
	r, err := NewRuntime(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	module := testmodule.Wat(b, testmodule.Print)
	c, err := r.Prepare(context.Background(), digest.FromBytes(module), func() ([]byte, error) { return module, nil })
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		inst, err := r.Start(c, Spec{ID: "bench", Args: []string{"x"}, Stdout: discard{}, Stderr: discard{}})
		if err != nil {
			b.Fatal(err)
		}
		<-inst.Done()
	}
}

// discard takes an output stream and keeps nothing.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
func (discard) Close() error                { return nil }

// BenchmarkStopSpinning is Stop of an instance spinning in module code, to
// its end: how promptly StopContainer ends a container, which the tests
// only bound by the timeout they pass (a busy machine makes any wall-clock
// bound flaky there).
func BenchmarkStopSpinning(b *testing.B) {
	r, err := NewRuntime(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	module := testmodule.Wat(b, testmodule.Spin)
	c, err := r.Prepare(context.Background(), digest.FromBytes(module), func() ([]byte, error) { return module, nil })
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		inst, err := r.Start(c, Spec{ID: "bench", Args: []string{"spin"}})
		if err != nil {
			b.Fatal(err)
		}
		// In its loop: its thread has used some CPU.
		for inst.Stats().CPU == 0 {
			time.Sleep(100 * time.Microsecond)
		}
		b.StartTimer()
		inst.Stop()
		<-inst.Done()
	}
}

// fdstatLoop calls fd_fdstat_get on stdout 100,000 times: a WASI call on
// an ordinary fd, which an instance with listeners sends through its
// dispatch module and trampoline to wasmtime's own function.
const fdstatLoop = `(module
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $n i32)
    (local.set $n (i32.const 100000))
    (loop $again
      (drop (call $fdstat (i32.const 1) (i32.const 0)))
      (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))))`

// BenchmarkOrdinaryFDCall is a WASI call on a file descriptor that is no
// socket, by an instance without listeners (wasmtime's function bound
// directly) and by one with a listener (dispatched): the dispatch should
// cost next to nothing, never a trip through Go.
func BenchmarkOrdinaryFDCall(b *testing.B) {
	r, err := NewRuntime(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	module := testmodule.Wat(b, fdstatLoop)
	c, err := r.Prepare(context.Background(), digest.FromBytes(module), func() ([]byte, error) { return module, nil })
	if err != nil {
		b.Fatal(err)
	}
	for _, listeners := range []int{0, 1} {
		b.Run(map[int]string{0: "direct", 1: "dispatched"}[listeners], func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				spec := Spec{ID: "bench", Stdout: discard{}, Stderr: discard{}}
				if listeners > 0 {
					b.StopTimer()
					l, _ := listen(b)
					spec.Listeners = []Listener{l}
					b.StartTimer()
				}
				inst, err := r.Start(c, spec)
				if err != nil {
					b.Fatal(err)
				}
				if res := inst.Result(); res.ExitCode != 0 {
					b.Fatalf("%+v", res)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/100000, "ns/call")
		})
	}
}
