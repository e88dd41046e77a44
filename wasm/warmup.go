package wasm

import (
	"os"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// warmupWAT writes one byte to stdout: enough for wasmtime's WASI to start
// its process-wide tokio runtime.
const warmupWAT = `(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))`

// warmUpWASI runs a WASI call on the calling (daemon) thread, so that the
// threads wasmtime's WASI spawns once per process start in the daemon's
// cgroup, not in the cgroup of the first CPU-capped instance.
func (r *Runtime) warmUpWASI() error {
	wasm, err := wasmtime.Wat2Wasm(warmupWAT)
	if err != nil {
		return err
	}
	mod, err := wasmtime.NewModule(r.compiler, wasm)
	if err != nil {
		return err
	}
	defer mod.Close()
	store := wasmtime.NewStore(r.compiler)
	defer store.Close()
	store.SetEpochDeadline(1) // the compiler's epoch never moves
	wasi := wasmtime.NewWasiConfig()
	if err := wasi.SetStdoutFile(os.DevNull); err != nil {
		wasi.Close()
		return err
	}
	store.SetWasi(wasi)
	linker := wasmtime.NewLinker(r.compiler)
	defer linker.Close()
	if err := linker.DefineWasi(); err != nil {
		return err
	}
	inst, err := linker.Instantiate(store, mod)
	if err != nil {
		return err
	}
	_, err = inst.GetFunc(store, "_start").Call(store)
	return err
}
