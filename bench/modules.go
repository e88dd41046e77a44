// Package bench measures wasmcri against its floor (wasmtime alone) and
// against containers, for `make bench` and docs/performance.md.
package bench

import (
	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// TinyExitWAT is the smallest WASI command: _start returns at once.
const TinyExitWAT = `(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")))`

// TinySleepWAT sleeps for an hour at a time, for ever: an idle pod.
const TinySleepWAT = testmodule.SleepHour

// Wat compiles WebAssembly text.
func Wat(text string) []byte {
	b, err := wasmtime.Wat2Wasm(text)
	if err != nil {
		panic(err)
	}
	return b
}

// Unique returns module with a custom section holding tag, so that each
// tag is a different module (a different digest, compiled anew).
func Unique(module []byte, tag string) []byte {
	return testmodule.WithCustomSection(module, "wasmcri-bench", []byte(tag))
}

// Padded appends a custom section of n bytes, to make a module of a size.
func Padded(module []byte, n int) []byte {
	return testmodule.WithCustomSection(module, "wasmcri-bench", make([]byte, n))
}
