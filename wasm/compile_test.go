package wasm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// bigModule is a WASI command of funcs functions of ops steps each: a
// module as large, and as slow to compile, as asked.
func bigModule(funcs, ops int) []byte {
	section := func(id byte, payload []byte) []byte {
		return append(appendU32([]byte{id}, uint32(len(payload))), payload...)
	}
	vec := func(n int, items ...[]byte) []byte {
		out := appendU32(nil, uint32(n))
		for _, it := range items {
			out = append(out, it...)
		}
		return out
	}
	// One step: local0 = local0 * 31 + local1, then a branch on it.
	step := []byte{
		0x20, 0x00, 0x41, 0x1f, 0x6c, 0x20, 0x01, 0x6a, 0x21, 0x00, // local.get 0; i32.const 31; i32.mul; local.get 1; i32.add; local.set 0
		0x20, 0x00, 0x04, 0x40, 0x20, 0x01, 0x41, 0x01, 0x6a, 0x21, 0x01, 0x0b, // if: local1 += 1
	}
	body := []byte{0x01, 0x02, 0x7f} // two i32 locals
	for i := 0; i < ops; i++ {
		body = append(body, step...)
	}
	body = append(body, 0x0b)
	code := appendU32(nil, uint32(funcs))
	funcIdx := appendU32(nil, uint32(funcs))
	for i := 0; i < funcs; i++ {
		code = append(appendU32(code, uint32(len(body))), body...)
		funcIdx = append(funcIdx, 0x00)
	}
	m := append([]byte{}, wasmHeader...)
	m = append(m, section(1, vec(1, []byte{0x60, 0x00, 0x00}))...)
	m = append(m, section(3, funcIdx)...)
	m = append(m, section(5, vec(1, []byte{0x00, 0x01}))...)
	exports := vec(2,
		append(append(appendU32(nil, 6), "_start"...), 0x00, 0x00),
		append(append(appendU32(nil, 6), "memory"...), 0x02, 0x00))
	m = append(m, section(7, exports)...)
	return append(m, section(10, code)...)
}

// prepareErr prepares module on r and returns the error, and how long it
// took.
func prepareErr(ctx context.Context, r *Runtime, module []byte) (time.Duration, error) {
	start := time.Now()
	_, err := r.Prepare(ctx, digest.FromBytes(module), func() ([]byte, error) { return module, nil })
	return time.Since(start), err
}

// cacheEntries lists the files of r's cache, temporary ones included.
func cacheEntries(t *testing.T, r *Runtime) []string {
	t.Helper()
	entries, err := os.ReadDir(r.cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// runPrint checks that r still compiles and runs a module.
func runPrint(t *testing.T, r *Runtime) {
	t.Helper()
	var out syncBuffer
	inst := startWithin(t, r, prepare(t, r, testmodule.Wat(t, testmodule.Print)), Spec{Stdout: &out}, 10*time.Second)
	if res := wait(t, inst, 10*time.Second); res.ExitCode != 0 || out.String() != "hi from wat\n" {
		t.Fatalf("result %+v, stdout %q", res, out.String())
	}
}

// A module that compiles for longer than compile_timeout is refused, its
// compiler killed; one that needs more memory than compile_memory_limit
// too. The slow module compiles without those limits: the baseline.
func TestCompileLimits(t *testing.T) {
	slow := bigModule(1, 10000)
	baseline := newRuntimeWith(t, Options{CompileTimeout: -1})
	took, err := prepareErr(context.Background(), baseline, slow)
	if err != nil {
		t.Fatalf("the slow module without a timeout: %v", err)
	}
	t.Logf("the slow module (%d bytes) compiles in %v", len(slow), took)

	// A tenth: the compile cannot get ten times faster under any change
	// of load within the test.
	timeout := took / 10
	r := newRuntimeWith(t, Options{CompileTimeout: timeout})
	refusedIn, err := prepareErr(context.Background(), r, slow)
	if err == nil || !strings.Contains(err.Error(), "took longer than runtime.compile_timeout "+timeout.String()) || errors.Is(err, ErrInvalidModule) || !errors.Is(err, ErrCompileLimit) {
		t.Fatalf("compile_timeout %v: err = %v", timeout, err)
	}
	if refusedIn >= took {
		t.Errorf("refused after %v; compiling took %v", refusedIn, took)
	}
	if names := cacheEntries(t, r); len(names) != 0 {
		t.Errorf("cache after a timeout: %q", names)
	}

	const limit = 8 << 20
	r = newRuntimeWith(t, Options{CompileMemoryLimit: limit})
	_, err = prepareErr(context.Background(), r, slow)
	if err == nil || !strings.Contains(err.Error(), "ran out of memory under runtime.compile_memory_limit 8388608 bytes") || errors.Is(err, ErrInvalidModule) || !errors.Is(err, ErrCompileLimit) {
		t.Fatalf("compile_memory_limit %d: err = %v", limit, err)
	}
	t.Logf("under %d bytes: %v", limit, err)
	if names := cacheEntries(t, r); len(names) != 0 {
		t.Errorf("cache after running out of memory: %q", names)
	}
	// And this process compiles and runs modules as before.
	runPrint(t, newRuntimeIn(t, t.TempDir()))
}

// A caller giving up kills the compilation it alone waits for; one that
// others wait for goes on.
func TestCompileEndsWithItsCallers(t *testing.T) {
	slow := bigModule(1, 10000)
	r := newRuntimeWith(t, Options{CompileTimeout: -1})
	compiler := func() bool { return compilerProcesses(t, digest.FromBytes(slow)) > 0 }

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := prepareErr(ctx, r, slow); errc <- err }()
	pollUntil(t, 10*time.Second, "compiler process started", compiler)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Prepare: %v", err)
	}
	pollUntil(t, 10*time.Second, "compiler process killed", func() bool { return !compiler() })
	// Killed, not finished: nothing went into the cache. The compile's
	// temporary file goes once the compile has seen its process end, which
	// may be a little after the process is gone.
	if !poll(10*time.Second, func() bool { return len(cacheEntries(t, r)) == 0 }) {
		t.Fatalf("cache after the compile was abandoned: %q", cacheEntries(t, r))
	}

	ctx, cancel = context.WithCancel(context.Background())
	go func() { _, err := prepareErr(ctx, r, slow); errc <- err }()
	pollUntil(t, 10*time.Second, "compiler process started", compiler)
	other := make(chan error, 1)
	go func() { _, err := prepareErr(context.Background(), r, slow); other <- err }()
	pollUntil(t, 10*time.Second, "second caller waiting", func() bool {
		r.waitersMu.Lock()
		defer r.waitersMu.Unlock()
		for _, w := range r.waiters {
			if w.n == 2 {
				return true
			}
		}
		return false
	})
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Prepare: %v", err)
	}
	if err := <-other; err != nil {
		t.Fatalf("the caller that stayed: %v", err)
	}
}

// compilerProcesses counts this process's compiler children for d.
func compilerProcesses(t *testing.T, d digest.Digest) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	n := 0
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, []byte("wasmcri-compile\x00"+d.String()+"\x00")) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			n++
		}
	}
	return n
}

func TestMaxModuleSize(t *testing.T) {
	// Valid WebAssembly up to the custom section, which says it is too
	// long: what compiling it would say.
	module := append(testmodule.Wat(t, testmodule.Print), 0x00, 0x7f)
	r := newRuntimeWith(t, Options{MaxModuleSize: int64(len(module))})
	if _, err := prepareErr(context.Background(), r, module); !errors.Is(err, ErrInvalidModule) || strings.Contains(err.Error(), "max_module_size") {
		t.Fatalf("at the limit: %v", err)
	}
	r = newRuntimeWith(t, Options{MaxModuleSize: int64(len(module)) - 1})
	_, err := prepareErr(context.Background(), r, module)
	if !errors.Is(err, ErrInvalidModule) || !strings.Contains(err.Error(), fmt.Sprintf("%d bytes, over max_module_size %d", len(module), len(module)-1)) {
		t.Fatalf("over the limit: %v", err)
	}
	if err := r.Validate(module); err == nil || !strings.Contains(err.Error(), "max_module_size") {
		t.Fatalf("Validate over the limit: %v", err)
	}
	// Validate refuses what Prepare would, at pull time.
	if err := r.Validate(testmodule.Wat(t, `(module (func (export "wasmcri.internal/x")))`)); !errors.Is(err, errReservedExport) {
		t.Fatalf("Validate of a module using the reserved names: %v", err)
	}
	if err := r.Validate(testmodule.Wat(t, testmodule.Print)); err != nil {
		t.Fatalf("Validate of a valid module: %v", err)
	}
	runPrint(t, r)
}

// The compiler process is the daemon's binary: compiling in it yields
// what compiling in the daemon would, and it costs little more.
func BenchmarkCompileGoModule(b *testing.B) { benchCompile(b, testmodule.Hello(b)) }

func BenchmarkCompileTiny(b *testing.B) { benchCompile(b, testmodule.Wat(b, testmodule.Print)) }

// benchCompile compiles module in this process and in the compiler
// process, a fresh artifact file each time.
func benchCompile(b *testing.B, module []byte) {
	b.Run("in-process", func(b *testing.B) {
		for range b.N {
			if _, _, err := compileModule(1<<20, module); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("child", func(b *testing.B) {
		r, err := NewRuntime(b.TempDir(), Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		dir := b.TempDir()
		for range b.N {
			f, err := os.CreateTemp(dir, "artifact")
			if err != nil {
				b.Fatal(err)
			}
			if err := r.compileInChild(context.Background(), digest.FromBytes(module), module, f); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
}

// A compile cut short by a crash leaves its temporary file; the next
// start-up removes it and keeps the finished artifacts.
func TestCrashLeftoverCompilesReclaimed(t *testing.T) {
	cache := t.TempDir()
	r := newRuntimeIn(t, cache)
	c := prepare(t, r, testmodule.Wat(t, testmodule.Print))
	leftover := filepath.Join(filepath.Dir(c.Path), ".compiling-123456")
	if err := os.WriteFile(leftover, []byte("half an artifact"), 0o600); err != nil {
		t.Fatal(err)
	}
	newRuntimeIn(t, cache)
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Fatalf("leftover compile kept: %v", err)
	}
	if _, err := os.Stat(c.Path); err != nil {
		t.Fatalf("finished artifact removed: %v", err)
	}
}
