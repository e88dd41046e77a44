// Package wasm runs WebAssembly modules on wasmtime: it compiles each module
// once into an on-disk cache (in a child process, under time and memory
// limits), and runs instances under WASI preview1 with their output
// copied to the caller's writers, a memory limit that bounds all their
// memories and tables, and a stop that interrupts only them, from the
// moment they are started.
package wasm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"
)

// WasmtimeVersion is the wasmtime-go release linked in; compiled modules
// are cached per version because wasmtime refuses another's artifacts.
// A test keeps it equal to go.mod.
const WasmtimeVersion = "39.0.1"

// cacheFormat names what the runtime does to a module before compiling
// it (exportMemoriesAndTables) and how it configures engines: artifacts of
// another format are kept apart.
const cacheFormat = "wasmcri2"

func init() {
	// Without this every wasmtime error text carries a Rust backtrace.
	if os.Getenv("RUST_LIB_BACKTRACE") == "" {
		os.Setenv("RUST_LIB_BACKTRACE", "0")
	}
}

// Options configure the Runtime.
type Options struct {
	// MaxWasmStack bounds each instance's wasm stack in bytes.
	MaxWasmStack int
	// CgroupName is the cgroup, under the daemon's own in the cpu
	// hierarchy, that holds capped instances (default "wasmcri").
	CgroupName string
	// DefaultMemoryLimit is the memory limit, in bytes, of an instance
	// whose Limits set none: it bounds the sum of its memories and tables
	// as Limits.MemoryBytes does. 0 leaves sizes to wasmtime's defaults (a
	// 32-bit memory can reach 4 GiB; a 64-bit memory or a table has no
	// bound); the numbers of instances, memories and tables are bounded
	// either way.
	DefaultMemoryLimit int64
	// MaxModuleSize refuses (with ErrInvalidModule) larger modules in
	// Validate and Prepare, before compiling. 0 is DefaultMaxModuleSize,
	// a negative value no limit.
	MaxModuleSize int64
	// CompileTimeout bounds the time of one compilation, after which its
	// process is killed. 0 is DefaultCompileTimeout, negative none.
	CompileTimeout time.Duration
	// CompileMemoryLimit bounds the memory (RLIMIT_DATA) the compiler
	// process may take beyond what it starts with. 0 is
	// DefaultCompileMemoryLimit, negative none.
	CompileMemoryLimit int64
	Logger             *slog.Logger
}

// orDefault is v, or def when v is 0; a negative v (no limit) is 0.
func orDefault[T int64 | time.Duration](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// Runtime compiles modules and starts instances. All instances run on one
// Engine, and the instances of a module share one loaded module (see
// shared.go); Stop reaches only its own instance through the store's epoch
// deadline callback (interrupt.go).
type Runtime struct {
	cacheDir string
	opts     Options
	// compiler compiles and validates; it never runs code.
	compiler *wasmtime.Engine
	compiles singleflight.Group
	// waiters are the callers of each compilation in flight, by path.
	waitersMu sync.Mutex
	waiters   map[string]*compileWaiters
	// cpu caps instance threads; nil where no cgroup controller is usable.
	cpu *cpuController
	// engine runs every instance; linker defines their imports.
	engine *wasmtime.Engine
	linker *wasmtime.Linker
	// mods holds the loaded form of each module in use, by compiled file;
	// loads makes concurrent first starts of a module load it once.
	modsMu sync.Mutex
	mods   map[string]*loaded
	loads  singleflight.Group
	// engineUsers counts the loaded modules alive or loading: the engine
	// closes when the runtime is closed and none is left. closed refuses
	// new loads; drops counts Forgets, so a load they overtook is not kept.
	engineUsers int
	closed      bool
	drops       uint64
	// CPUCapsUnavailable says why CPU quotas are not enforced, or is nil.
	CPUCapsUnavailable error
	// helpers are the modules instances with listeners are linked through
	// (socket_dispatch.go), compiled on first use.
	helpers helperCache
	// beforeInstantiate, when set (by tests), runs on each instance's
	// thread after Start has returned and before instantiation.
	beforeInstantiate func(*Instance)
	// afterLoad, when set (by tests), runs after each load of a compiled
	// module, before the runtime keeps it.
	afterLoad func(Compiled)
	// compileSlots bounds the compiler processes running at once: each
	// may take compile_memory_limit, and distinct hostile modules would
	// otherwise multiply it.
	compileSlots chan struct{}
}

// NewRuntime keeps compiled modules under cacheDir.
func NewRuntime(cacheDir string, opts Options) (*Runtime, error) {
	if opts.MaxWasmStack <= 0 {
		opts.MaxWasmStack = 1 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.CgroupName == "" {
		opts.CgroupName = "wasmcri"
	}
	opts.MaxModuleSize = orDefault(opts.MaxModuleSize, DefaultMaxModuleSize)
	opts.CompileTimeout = orDefault(opts.CompileTimeout, DefaultCompileTimeout)
	opts.CompileMemoryLimit = orDefault(opts.CompileMemoryLimit, DefaultCompileMemoryLimit)
	dir := filepath.Join(cacheDir, "wasmtime-"+WasmtimeVersion+"-"+cacheFormat)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create module cache: %w", err)
	}
	// Artifacts of this wasmtime compiled before the reserved exports
	// existed cannot be limited: they are of no use any more.
	os.RemoveAll(filepath.Join(cacheDir, "wasmtime-"+WasmtimeVersion))
	// Compiles a crash cut short left their temporary files.
	if leftovers, err := filepath.Glob(filepath.Join(dir, ".compiling-*")); err == nil {
		for _, f := range leftovers {
			os.Remove(f)
		}
	}
	r := &Runtime{cacheDir: dir, opts: opts, mods: map[string]*loaded{}, waiters: map[string]*compileWaiters{},
		compileSlots: make(chan struct{}, max(runtime.NumCPU(), 1))}
	r.compiler = wasmtime.NewEngineWithConfig(r.engineConfig())
	r.engine = wasmtime.NewEngineWithConfig(r.engineConfig())
	var err error
	if r.linker, err = newLinker(r.engine); err != nil {
		r.engine.Close()
		r.compiler.Close()
		return nil, fmt.Errorf("define WASI: %w", err)
	}
	r.cpu, r.CPUCapsUnavailable = newCPUController(opts.CgroupName)
	if r.CPUCapsUnavailable != nil {
		opts.Logger.Warn("CPU quotas will not be enforced", "reason", r.CPUCapsUnavailable)
	} else if err := r.warmUpWASI(); err != nil {
		r.Close()
		return nil, fmt.Errorf("warm up WASI: %w", err)
	}
	return r, nil
}

// engineConfig is the one configuration every engine uses; compiled
// artifacts are only loadable by an engine configured the same way.
func (r *Runtime) engineConfig() *wasmtime.Config { return engineConfig(r.opts.MaxWasmStack) }

func engineConfig(maxWasmStack int) *wasmtime.Config {
	cfg := wasmtime.NewConfig()
	cfg.SetEpochInterruption(true)
	cfg.SetMaxWasmStack(maxWasmStack)
	// Shared memories escape the store limiter (they may be grown from
	// other threads), and WASI preview1 has no threads to share them with.
	cfg.SetWasmThreads(false)
	return cfg
}

// Close releases the compiler engine and the loaded modules; instances
// still running keep theirs, and the engine, until they end. Start fails
// after Close.
func (r *Runtime) Close() {
	r.closeShared()
	r.compiler.Close()
}

// Validate checks that b is a valid core module for this wasmtime, that
// Prepare will take: not over MaxModuleSize, not using the reserved export
// names. It runs in the daemon (wasmtime's validator is linear in the
// module's size); compilation does not. Its error is one line.
func (r *Runtime) Validate(b []byte) error {
	if max := r.opts.MaxModuleSize; max > 0 && int64(len(b)) > max {
		return fmt.Errorf("%d bytes, over max_module_size %d", len(b), max)
	}
	if _, err := parseModule(b); err != nil {
		return err
	}
	if err := wasmtime.ModuleValidate(r.compiler, b); err != nil {
		// wasmtime's message goes on with a backtrace-like context; the
		// first line says what is wrong.
		return errors.New(firstLine(err.Error()))
	}
	return nil
}

// Compiled is a module ready to instantiate: its cached compiled form.
type Compiled struct {
	Digest digest.Digest
	Path   string
	// Fresh says this call compiled it (a cache miss).
	Fresh bool
}

// Prepare returns the cached compiled form of the module with digest d,
// compiling it from load() on a miss, in a child process under the
// compile limits (see compile.go). Concurrent callers for one module share
// one compilation; it is abandoned (its process killed) when every one of
// them has given up (ctx ended), and Prepare returns when its own ctx
// ends.
func (r *Runtime) Prepare(ctx context.Context, d digest.Digest, load func() ([]byte, error)) (Compiled, error) {
	if err := d.Validate(); err != nil {
		return Compiled{}, fmt.Errorf("module digest %q: %w", d, err)
	}
	path := r.compiledPath(d)
	if _, err := os.Stat(path); err == nil {
		return Compiled{Digest: d, Path: path}, nil
	}
	f := r.joinCompile(ctx, path)
	defer r.leaveCompile(path, f)
	ch := r.compiles.DoChan(path, func() (any, error) {
		if _, err := os.Stat(path); err == nil {
			return false, nil
		}
		return true, r.compile(f.ctx, d, path, load)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return Compiled{}, res.Err
		}
		return Compiled{Digest: d, Path: path, Fresh: res.Val.(bool)}, nil
	case <-ctx.Done():
		return Compiled{}, fmt.Errorf("compile of module %s: %w", d, ctx.Err())
	}
}

// compileWaiters is the context of one compilation: it ends when the last
// caller waiting for it has left.
type compileWaiters struct {
	ctx    context.Context
	cancel context.CancelFunc
	n      int
}

func (r *Runtime) joinCompile(ctx context.Context, path string) *compileWaiters {
	r.waitersMu.Lock()
	defer r.waitersMu.Unlock()
	f := r.waiters[path]
	if f == nil {
		f = &compileWaiters{}
		f.ctx, f.cancel = context.WithCancel(context.WithoutCancel(ctx))
		r.waiters[path] = f
	}
	f.n++
	return f
}

func (r *Runtime) leaveCompile(path string, f *compileWaiters) {
	r.waitersMu.Lock()
	defer r.waitersMu.Unlock()
	if f.n--; f.n == 0 {
		f.cancel()
		delete(r.waiters, path)
	}
}

// ErrInvalidModule wraps compile failures of the module itself.
var ErrInvalidModule = errors.New("invalid WebAssembly module")

// ErrCompileLimit wraps compiles stopped by the node's limits
// (runtime.compile_timeout, runtime.compile_memory_limit): the module may
// be valid, but is too costly to compile here.
var ErrCompileLimit = errors.New("compile limit reached")

// compiledPath is where the compiled form of module d is cached.
func (r *Runtime) compiledPath(d digest.Digest) string {
	return filepath.Join(r.cacheDir, d.Algorithm().String()+"-"+d.Encoded()+".cwasm")
}

// Forget drops what was compiled from module d, if anything: its cached
// file and its loaded module. Running instances keep the loaded module
// until the last of them ends. The image store calls it when no image
// holds the module any more.
func (r *Runtime) Forget(d digest.Digest) error {
	if d.Validate() != nil {
		return nil
	}
	path := r.compiledPath(d)
	// The file goes first: a load that opens it before is overtaken by
	// the drop, and is not kept (loadShared); one after finds it gone.
	err := os.Remove(path)
	r.drop(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// CompiledModules lists the modules the cache holds a compiled form of.
func (r *Runtime) CompiledModules() ([]digest.Digest, error) {
	entries, err := os.ReadDir(r.cacheDir)
	if err != nil {
		return nil, err
	}
	var out []digest.Digest
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".cwasm")
		alg, hex, found := strings.Cut(name, "-")
		if !ok || !found {
			continue
		}
		if d := digest.NewDigestFromEncoded(digest.Algorithm(alg), hex); d.Validate() == nil {
			out = append(out, d)
		}
	}
	return out, nil
}

// checkLink tells whether instantiating module with linker can succeed as
// far as linking goes, without instantiating it (which would run its start
// section): every import must be defined by the linker with the type the
// module expects, and _start must be an exported func () -> ().
func checkLink(engine *wasmtime.Engine, linker *wasmtime.Linker, module *wasmtime.Module) error {
	// Looking up a linker's definitions takes a store; this one runs nothing.
	store := wasmtime.NewStore(engine)
	defer store.Close()
	for _, imp := range module.Imports() {
		name := ""
		if n := imp.Name(); n != nil {
			name = *n
		}
		def := linker.Get(store, imp.Module(), name)
		if def == nil {
			return fmt.Errorf("instantiate: unknown import: `%s::%s` has not been defined", imp.Module(), name)
		}
		want, have := describeExtern(imp.Type()), describeExtern(def.Type(store))
		if want != have {
			return fmt.Errorf("instantiate: incompatible import type for `%s::%s`: the module expects %s, the runtime provides %s", imp.Module(), name, want, have)
		}
	}
	for _, exp := range module.Exports() {
		if exp.Name() != "_start" {
			continue
		}
		if d := describeExtern(exp.Type()); d != "func () -> ()" {
			return fmt.Errorf("the module's _start is %s, not a func () -> (): it is not a WASI command", d)
		}
		return nil
	}
	return errors.New("the module exports no _start function: it is not a WASI command")
}

// describeExtern writes an extern type out for comparison and messages.
// Functions are compared by value kinds, all the runtime's imports are.
func describeExtern(t *wasmtime.ExternType) string {
	switch {
	case t.FuncType() != nil:
		ft := t.FuncType()
		kinds := func(vs []*wasmtime.ValType) string {
			s := make([]string, len(vs))
			for i, v := range vs {
				s[i] = v.Kind().String()
			}
			return strings.Join(s, ", ")
		}
		return "func (" + kinds(ft.Params()) + ") -> (" + kinds(ft.Results()) + ")"
	case t.MemoryType() != nil:
		return "a memory"
	case t.TableType() != nil:
		return "a table"
	case t.GlobalType() != nil:
		return "a global"
	}
	return "an extern of unknown kind"
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
