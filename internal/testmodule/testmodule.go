// Package testmodule builds the WebAssembly modules the tests run: the
// example program compiled by the Go toolchain for wasip1, and WAT texts.
package testmodule

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

var (
	helloOnce sync.Once
	helloWasm []byte
	helloErr  error
)

// Hello returns examples/hello built with GOOS=wasip1 GOARCH=wasm, building
// it once per test process.
func Hello(t testing.TB) []byte {
	t.Helper()
	helloOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		src := filepath.Join(filepath.Dir(file), "..", "..", "examples", "hello")
		dir, err := os.MkdirTemp("", "wasmcri-hello-")
		if err != nil {
			helloErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "hello.wasm")
		cmd := exec.Command("go", "build", "-o", out, ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			helloErr = &buildError{err: err, output: string(b)}
			return
		}
		helloWasm, helloErr = os.ReadFile(out)
	})
	if helloErr != nil {
		t.Fatalf("build examples/hello for wasip1: %v", helloErr)
	}
	return helloWasm
}

type buildError struct {
	err    error
	output string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.output }

// Wat compiles WebAssembly text.
func Wat(t testing.TB, text string) []byte {
	t.Helper()
	b, err := wasmtime.Wat2Wasm(text)
	if err != nil {
		t.Fatalf("wat2wasm: %v", err)
	}
	return b
}

// Trap is a WASI command whose _start executes unreachable.
const Trap = `(module
  (memory (export "memory") 1)
  (func (export "_start") unreachable))`

// Spin is a WASI command that loops forever without a host call.
const Spin = `(module
  (memory (export "memory") 1)
  (func (export "_start") (loop (br 0))))`

// Print prints "hi from wat" and returns.
const Print = `(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi from wat\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 12))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))`

// NoStart is a valid module that is not a WASI command.
const NoStart = `(module (memory (export "memory") 1) (func (export "run")))`

// UnknownImport needs a host function no runtime provides.
const UnknownImport = `(module
  (import "env" "launch_missiles" (func))
  (memory (export "memory") 1)
  (func (export "_start") call 0))`
