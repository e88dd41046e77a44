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
