package wasm

import (
	"errors"
	"fmt"
	"os"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// One loaded module per compiled module, shared by all its instances.
//
// Deserializing a compiled module maps its file into the daemon, and RSS
// counts every mapping's resident pages in full though they are the same
// page-cache pages: with a load per instance, the daemon's RSS grew by the
// module's resident code with every instance (3.6 MiB for the Go test
// module) while its PSS did not. So the runtime has one Engine for all
// instances (interrupt.go lets Stop reach only its own instance on it)
// and deserializes each compiled module once, into a loaded that the
// instances share and reference-count: it is closed, and its file
// unmapped, once the image store has forgotten the module (Forget) or the
// runtime is closed, and its last running instance has ended.
//
// What is still mapped once per instance is the copy-on-write image of
// the module's data in each linear memory (wasmtime's memory_init_cow):
// RSS counts its resident pages per instance, PSS once, since instances
// share them until they write them. Copying the data instead would make
// RSS honest and PSS worse (TestMemoryPerInstance logs the figures).

// loaded is a compiled module deserialized into the runtime's engine: all
// an instance of it needs but its store.
type loaded struct {
	module *wasmtime.Module
	// shape is the number of memories and tables of the module.
	shape moduleShape
	// linkErr is why the module cannot be instantiated with the runtime's
	// linker, found once at load.
	linkErr error
	// refs counts the instances holding it, plus one while r.mods does;
	// guarded by r.modsMu.
	refs int
}

var errRuntimeClosed = errors.New("the runtime is closed")

// acquire takes a reference to the loaded module of c, loading it on
// first use. Concurrent first starts of one module load it once.
func (r *Runtime) acquire(c Compiled) (*loaded, error) {
	for {
		r.modsMu.Lock()
		if r.closed {
			r.modsMu.Unlock()
			return nil, errRuntimeClosed
		}
		if ld := r.mods[c.Path]; ld != nil {
			ld.refs++
			r.modsMu.Unlock()
			return ld, nil
		}
		r.modsMu.Unlock()
		if _, err, _ := r.loads.Do(c.Path, func() (any, error) { return nil, r.loadShared(c) }); err != nil {
			return nil, err
		}
		// Loaded: the next round takes a reference, unless it was
		// forgotten meanwhile (then that round loads it again, or finds
		// its file gone).
	}
}

// loadShared loads c into r.mods, unless it is there already. A load that
// a Forget (of any module) overtook is not kept: it may be of a file that
// was forgotten after it was opened, and the caller's next round loads
// afresh.
func (r *Runtime) loadShared(c Compiled) error {
	r.modsMu.Lock()
	if r.closed {
		r.modsMu.Unlock()
		return errRuntimeClosed
	}
	if _, have := r.mods[c.Path]; have {
		r.modsMu.Unlock()
		return nil
	}
	// The engine stays open while it loads.
	r.engineUsers++
	drops := r.drops
	r.modsMu.Unlock()
	ld, err := r.load(c)
	if hook := r.afterLoad; hook != nil {
		hook(c)
	}
	r.modsMu.Lock()
	if err == nil && !r.closed && r.drops == drops {
		ld.refs = 1
		r.mods[c.Path] = ld
		r.modsMu.Unlock()
		return nil
	}
	if err == nil && r.closed {
		err = errRuntimeClosed
	}
	r.engineUsers--
	closeEngine := r.closed && r.engineUsers == 0
	r.modsMu.Unlock()
	if ld != nil {
		ld.close()
	}
	if closeEngine {
		r.closeEngine()
	}
	return err
}

// release drops a reference taken by acquire (or the map's own). The last
// one closes the module, and the engine too once the runtime is closed
// and no other module is left.
func (r *Runtime) release(ld *loaded) {
	r.modsMu.Lock()
	ld.refs--
	last := ld.refs == 0
	if last {
		r.engineUsers--
	}
	closeEngine := last && r.closed && r.engineUsers == 0
	r.modsMu.Unlock()
	if last {
		ld.close()
	}
	if closeEngine {
		r.closeEngine()
	}
}

// drop removes the loaded module of path from the map, if there, and
// releases the map's reference: running instances keep theirs.
func (r *Runtime) drop(path string) {
	r.modsMu.Lock()
	r.drops++
	ld := r.mods[path]
	delete(r.mods, path)
	r.modsMu.Unlock()
	if ld != nil {
		r.release(ld)
	}
}

// closeShared closes the runtime's side of the sharing: no more loads, the
// map's references released. The engine closes with the last module.
func (r *Runtime) closeShared() {
	r.modsMu.Lock()
	if r.closed {
		r.modsMu.Unlock()
		return
	}
	r.closed = true
	mods := r.mods
	r.mods = map[string]*loaded{}
	closeEngine := r.engineUsers == 0
	r.modsMu.Unlock()
	for _, ld := range mods {
		r.release(ld)
	}
	if closeEngine {
		r.closeEngine()
	}
}

func (r *Runtime) closeEngine() {
	r.helpers.h.close()
	r.linker.Close()
	r.engine.Close()
}

func (l *loaded) close() { l.module.Close() }

// load deserializes a compiled module into the runtime's engine. A cache
// file wasmtime will not load (another build, corruption) is dropped so
// the next Prepare compiles it again.
func (r *Runtime) load(c Compiled) (*loaded, error) {
	mod, err := wasmtime.NewModuleDeserializeFile(r.engine, c.Path)
	if err != nil {
		os.Remove(c.Path)
		return nil, fmt.Errorf("load compiled module %s (dropped from the cache, will recompile): %s", c.Digest, firstLine(err.Error()))
	}
	ld := &loaded{module: mod}
	if ld.shape, err = shapeOf(mod); err != nil {
		mod.Close()
		os.Remove(c.Path)
		return nil, fmt.Errorf("load compiled module %s (dropped from the cache, will recompile): %w", c.Digest, err)
	}
	ld.linkErr = checkLink(r.engine, r.linker, mod)
	return ld, nil
}

// newLinker defines what instances may import: WASI preview1, with our
// poll_oneoff in place of wasmtime's. One linker serves every module and
// instance of the engine: wasmtime's linker is only read once defined.
func newLinker(engine *wasmtime.Engine) (*wasmtime.Linker, error) {
	linker := wasmtime.NewLinker(engine)
	if err := linker.DefineWasi(); err != nil {
		linker.Close()
		return nil, err
	}
	if err := definePollOneoff(linker); err != nil {
		linker.Close()
		return nil, err
	}
	return linker, nil
}
