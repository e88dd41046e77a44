package bench

import (
	"os"
	"path/filepath"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// Floor runs a module the cheapest way wasmtime-go allows: a new store with
// WASI, instantiate, run _start, on an engine that compiled the module
// once. It is what any Wasm runtime pays per instance, with no CRI, no
// logs and no isolation between instances.
type Floor struct {
	engine *wasmtime.Engine
	module *wasmtime.Module
	linker *wasmtime.Linker
	out    string
}

// NewFloor compiles module.
func NewFloor(module []byte, dir string) (*Floor, error) {
	engine := wasmtime.NewEngine()
	mod, err := wasmtime.NewModule(engine, module)
	if err != nil {
		return nil, err
	}
	linker := wasmtime.NewLinker(engine)
	if err := linker.DefineWasi(); err != nil {
		return nil, err
	}
	return &Floor{engine: engine, module: mod, linker: linker, out: filepath.Join(dir, "floor.out")}, nil
}

// Run is one instance, start to exit. Output goes to a file, as WASI
// output must.
func (f *Floor) Run(args ...string) error {
	store := wasmtime.NewStore(f.engine)
	defer store.Close()
	wasi := wasmtime.NewWasiConfig()
	wasi.SetArgv(append([]string{"bench"}, args...))
	if err := wasi.SetStdoutFile(f.out); err != nil {
		return err
	}
	store.SetWasi(wasi)
	inst, err := f.linker.Instantiate(store, f.module)
	if err != nil {
		return err
	}
	_, err = inst.GetFunc(store, "_start").Call(store)
	if werr, ok := err.(*wasmtime.Error); ok {
		if code, isExit := werr.ExitStatus(); isExit && code == 0 {
			return nil
		}
	}
	return err
}

// Close releases the engine and removes the output file.
func (f *Floor) Close() {
	f.linker.Close()
	f.module.Close()
	f.engine.Close()
	os.Remove(f.out)
}
