// Package testmodule builds the WebAssembly modules the tests run: the
// example program compiled by the Go toolchain for wasip1, and WAT texts.
package testmodule

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// goModule is a Go program of this repository built for wasip1, once per
// test process.
type goModule struct {
	dir  string // relative to the repository root
	once sync.Once
	wasm []byte
	err  error
}

var (
	hello     = &goModule{dir: "examples/hello"}
	webserver = &goModule{dir: "examples/webserver"}
	wasmbox   = &goModule{dir: "integration/images/wasmbox"}
)

// Hello returns examples/hello built with GOOS=wasip1 GOARCH=wasm.
func Hello(t testing.TB) []byte { return hello.build(t) }

// Webserver returns examples/webserver built for wasip1: an HTTP server on
// the listeners it is handed.
func Webserver(t testing.TB) []byte { return webserver.build(t) }

// Wasmbox returns the busybox-like conformance test program for wasip1.
func Wasmbox(t testing.TB) []byte { return wasmbox.build(t) }

func (g *goModule) build(t testing.TB) []byte {
	t.Helper()
	g.once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		src := filepath.Join(filepath.Dir(file), "..", "..", g.dir)
		dir, err := os.MkdirTemp("", "wasmcri-module-")
		if err != nil {
			g.err = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "module.wasm")
		cmd := exec.Command("go", "build", "-o", out, ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			g.err = &buildError{err: err, output: string(b)}
			return
		}
		g.wasm, g.err = os.ReadFile(out)
	})
	if g.err != nil {
		t.Fatalf("build %s for wasip1: %v", g.dir, g.err)
	}
	return g.wasm
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

// SleepHour is a WASI command that sleeps in poll_oneoff an hour at a
// time, for ever: an idle pod.
const SleepHour = `(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (loop $again
      (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
      (br $again))))`

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

// StartSpin is a WASI command whose start section loops forever: its
// instantiation never returns.
const StartSpin = `(module
  (memory (export "memory") 1)
  (func $spin (loop (br 0)))
  (start $spin)
  (func (export "_start")))`

// TableBomb grows a (not exported) table until table.grow fails, then
// traps: each element costs the host 8 bytes of heap, none of them linear
// memory.
const TableBomb = `(module
  (memory (export "memory") 1)
  (table 1 funcref)
  (func (export "_start")
    (loop $grow
      (br_if $grow (i32.ne (table.grow (ref.null func) (i32.const 65536)) (i32.const -1))))
    unreachable))`

// ManyMemories defines n memories of initial pages each (multi-memory) and
// grows each until memory.grow fails, then traps.
func ManyMemories(n, initial int) string {
	var b strings.Builder
	b.WriteString("(module\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  (memory %d)\n", initial)
	}
	b.WriteString("  (func (export \"_start\")\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "    (loop $g%d (br_if $g%d (i32.ne (memory.grow %d (i32.const 1)) (i32.const -1))))\n", i, i, i)
	}
	b.WriteString("    unreachable))")
	return b.String()
}
