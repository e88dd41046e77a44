package wasm

import (
	"context"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// BenchmarkStartTiny is one instance of a tiny cached module, start to
// exit, with output pipes and a CRI log: what StartContainer pays in wasm.
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
	l, err := OpenCRILog(b.TempDir() + "/log")
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		inst, err := r.Start(c, Spec{ID: "bench", Args: []string{"x"}, Stdout: l.Stream("stdout"), Stderr: l.Stream("stderr")})
		if err != nil {
			b.Fatal(err)
		}
		<-inst.Done()
	}
}
