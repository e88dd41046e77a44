package testmodule

import (
	"bytes"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

func TestWithCustomSectionStaysValid(t *testing.T) {
	base := Wat(t, Print)
	engine := wasmtime.NewEngine()
	for _, n := range []int{0, 1, 127, 128, 300, 1 << 20} {
		mod := WithCustomSection(base, "pad", make([]byte, n))
		if bytes.Equal(mod, base) || len(mod) < len(base)+n {
			t.Errorf("%d bytes of padding: module of %d bytes from %d", n, len(mod), len(base))
		}
		if err := wasmtime.ModuleValidate(engine, mod); err != nil {
			t.Errorf("%d bytes of padding: %v", n, err)
		}
	}
}
