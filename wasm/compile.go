package wasm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Modules are compiled in a child process: the daemon's own binary run
// again (/proc/self/exe, as moby's reexec does), which this package's
// init turns into a compiler when compileChildEnv is set. It reads the
// module on stdin and writes the serialized artifact to file descriptor 3,
// the cache's temporary file. The parent kills it past CompileTimeout or
// when the caller gives up, and it sets its own memory rlimit before
// reading anything; whatever a hostile module does to the compiler, the
// daemon only sees a process exit.

const (
	compileChildEnv  = "WASMCRI_COMPILE_CHILD"
	compileStackEnv  = "WASMCRI_COMPILE_MAX_WASM_STACK"
	compileMemoryEnv = "WASMCRI_COMPILE_MEMORY_LIMIT"
)

// Exit statuses of the compiler process besides 0; Go's runtime exits
// with 2 on a fatal error, Rust aborts with SIGABRT.
const (
	// exitInvalid: the module is not valid; stderr says why.
	exitInvalid = 10
	// exitUncompilable: valid, but wasmtime could not compile it.
	exitUncompilable = 11
	// exitFailed: anything else (I/O, setting the rlimit).
	exitFailed = 12
)

func init() {
	if os.Getenv(compileChildEnv) == "" {
		return
	}
	os.Exit(compileChild())
}

// compileChild is the compiler process's whole life.
func compileChild() int {
	if os.Getenv("RUST_LIB_BACKTRACE") == "" {
		os.Setenv("RUST_LIB_BACKTRACE", "0")
	}
	if limit, _ := strconv.ParseInt(os.Getenv(compileMemoryEnv), 10, 64); limit > 0 {
		if err := limitMemory(limit); err != nil {
			fmt.Fprintln(os.Stderr, "set the memory limit:", err)
			return exitFailed
		}
	}
	stack, _ := strconv.Atoi(os.Getenv(compileStackEnv))
	module, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "read the module:", err)
		return exitFailed
	}
	artifact, status, err := compileModule(stack, module)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return status
	}
	out := os.NewFile(3, "artifact")
	if _, err := out.Write(artifact); err != nil {
		fmt.Fprintln(os.Stderr, "write the artifact:", err)
		return exitFailed
	}
	if err := out.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "write the artifact:", err)
		return exitFailed
	}
	return 0
}

// compileModule makes the module's artifact, with its memories and tables
// exported (exportMemoriesAndTables), for engines of this configuration.
// On failure the status says whose fault it is.
func compileModule(maxWasmStack int, module []byte) ([]byte, int, error) {
	if maxWasmStack <= 0 {
		maxWasmStack = 1 << 20
	}
	engine := wasmtime.NewEngineWithConfig(engineConfig(maxWasmStack))
	defer engine.Close()
	// Validation first: its messages and offsets are about the module as
	// given.
	if err := wasmtime.ModuleValidate(engine, module); err != nil {
		return nil, exitInvalid, errors.New(firstLine(err.Error()))
	}
	instrumented, _, err := exportMemoriesAndTables(module)
	if err != nil {
		return nil, exitInvalid, err
	}
	mod, err := wasmtime.NewModule(engine, instrumented)
	if err != nil {
		return nil, exitUncompilable, errors.New(trapMessage(err.Error()))
	}
	defer mod.Close()
	artifact, err := mod.Serialize()
	if err != nil {
		return nil, exitFailed, fmt.Errorf("serialize: %w", err)
	}
	return artifact, 0, nil
}

// limitMemory bounds the data segment of this process to limit bytes
// beyond what it already has. RLIMIT_DATA counts private writable
// mappings (heaps, anonymous memory, thread stacks), not address space
// merely reserved: RLIMIT_AS would have to cover the gigabytes of address
// space Go, glibc and wasmtime reserve and never use (a compiler process
// maps 1.5 GiB at start and peaks past 2 GiB compiling the Go test module
// with 111 MiB resident). What the process starts with (about 100 MiB,
// 400 MiB under the race detector) is not the module's doing, so the limit
// is counted from there.
func limitMemory(limit int64) error {
	base := procStatusKB("VmData")
	lim := uint64(base<<10) + uint64(limit)
	return unix.Setrlimit(unix.RLIMIT_DATA, &unix.Rlimit{Cur: lim, Max: lim})
}

// procStatusKB reads a figure of /proc/self/status, in KiB.
func procStatusKB(field string) int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// Defaults of the compile limits.
const (
	DefaultMaxModuleSize      = 128 << 20
	DefaultCompileTimeout     = 2 * time.Minute
	DefaultCompileMemoryLimit = 2 << 30
)

// compile compiles the module with digest d from load() into the cache
// file at path, in a child process under the compile limits.
func (r *Runtime) compile(ctx context.Context, d digest.Digest, path string, load func() ([]byte, error)) error {
	b, err := load()
	if err != nil {
		return fmt.Errorf("load module %s: %w", d, err)
	}
	if max := r.opts.MaxModuleSize; max > 0 && int64(len(b)) > max {
		return fmt.Errorf("%w %s: %d bytes, over max_module_size %d", ErrInvalidModule, d, len(b), max)
	}
	if got := digest.FromBytes(b); got != d {
		return fmt.Errorf("module content is %s, expected %s", got, d)
	}
	select {
	case r.compileSlots <- struct{}{}:
		defer func() { <-r.compileSlots }()
	case <-ctx.Done():
		return fmt.Errorf("compile of module %s: %w", d, ctx.Err())
	}
	start := time.Now()
	// Write then rename, so a crash never leaves a torn file in the cache.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".compiling-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	err = r.compileInChild(ctx, d, b, tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	st, err := os.Stat(tmp.Name())
	if err != nil {
		return err
	}
	if st.Size() == 0 {
		return fmt.Errorf("compile of module %s: the compiler process wrote nothing", d)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	r.opts.Logger.Info("compiled module", "digest", d, "bytes", len(b), "compiled_bytes", st.Size(), "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// compileInChild runs the compiler process on module, writing to out.
func (r *Runtime) compileInChild(ctx context.Context, d digest.Digest, module []byte, out *os.File) error {
	cctx, cancel := ctx, context.CancelFunc(func() {})
	if r.opts.CompileTimeout > 0 {
		cctx, cancel = context.WithTimeout(ctx, r.opts.CompileTimeout)
	}
	defer cancel()
	cmd := exec.CommandContext(cctx, "/proc/self/exe")
	cmd.Args = []string{"wasmcri-compile", d.String()}
	cmd.Env = append(os.Environ(),
		compileChildEnv+"=1",
		compileStackEnv+"="+strconv.Itoa(r.opts.MaxWasmStack),
		compileMemoryEnv+"="+strconv.FormatInt(max(r.opts.CompileMemoryLimit, 0), 10))
	cmd.Stdin = bytes.NewReader(module)
	cmd.ExtraFiles = []*os.File{out}
	stderr := &headTail{max: 2 << 10}
	cmd.Stderr = stderr
	// The compiler dies with the daemon. Pdeathsig fires when the thread
	// that forked the child ends, and threads locked by an instance end
	// with it: this goroutine keeps its thread until the child is done.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	runtime.LockOSThread()
	err := cmd.Run()
	runtime.UnlockOSThread()
	if err == nil {
		return nil
	}
	msg := stderr.String()
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("compile of module %s: %w", d, ctx.Err())
	case errors.Is(cctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w: compile of module %s took longer than runtime.compile_timeout %v", ErrCompileLimit, d, r.opts.CompileTimeout)
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return fmt.Errorf("compile of module %s: run the compiler process: %w", d, err)
	}
	switch {
	case exit.ExitCode() == exitInvalid:
		return fmt.Errorf("%w %s: %s", ErrInvalidModule, d, firstLine(msg))
	case r.opts.CompileMemoryLimit > 0 && oomLine(msg) != "":
		return fmt.Errorf("%w: compile of module %s ran out of memory under runtime.compile_memory_limit %d bytes: %s", ErrCompileLimit, d, r.opts.CompileMemoryLimit, oomLine(msg))
	case exit.ExitCode() == exitUncompilable:
		return fmt.Errorf("%w %s: cannot be compiled: %s", ErrInvalidModule, d, firstLine(msg))
	case r.opts.CompileMemoryLimit > 0 && crashLine(msg) != "":
		// Code that does not check an allocation (in the compiler or the
		// runtime under it) faults instead of reporting; under the limit
		// that is the limit's doing.
		return fmt.Errorf("%w: compile of module %s crashed under runtime.compile_memory_limit %d bytes, most likely out of memory: %s", ErrCompileLimit, d, r.opts.CompileMemoryLimit, crashLine(msg))
	}
	return fmt.Errorf("compile of module %s: the compiler process failed (%v): %s", d, exit, firstLine(msg))
}

// oomReports are how the compiler process says it ran out of memory: Go's
// runtime, Rust's allocator, mmap failing in wasmtime, and threads that
// cannot get a stack.
var oomReports = []string{"out of memory", "memory allocation of", "Cannot allocate memory", "cannot allocate memory", "failed to allocate", "failed to create new OS thread", "Resource temporarily unavailable"}

// crashLine is the line of msg where the compiler process reports a
// memory fault, or "".
func crashLine(msg string) string {
	for _, line := range strings.Split(msg, "\n") {
		if strings.Contains(line, "SIGSEGV") || strings.Contains(line, "SIGBUS") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// oomLine is the line of msg that reports running out of memory, or "".
func oomLine(msg string) string {
	for _, line := range strings.Split(msg, "\n") {
		for _, s := range oomReports {
			if strings.Contains(line, s) {
				return strings.TrimSpace(line)
			}
		}
	}
	return ""
}

// headTail keeps the first and the last max bytes written to it: where a
// crashing process says why, and where it ends.
type headTail struct {
	max        int
	head, tail []byte
	cut        bool
}

func (h *headTail) Write(p []byte) (int, error) {
	n := len(p)
	if room := h.max - len(h.head); room > 0 {
		k := min(room, len(p))
		h.head = append(h.head, p[:k]...)
		p = p[k:]
	}
	h.tail = append(h.tail, p...)
	if len(h.tail) > h.max {
		h.tail = append(h.tail[:0], h.tail[len(h.tail)-h.max:]...)
		h.cut = true
	}
	return n, nil
}

func (h *headTail) String() string {
	sep := ""
	if h.cut {
		sep = "\n...\n"
	}
	return strings.TrimSpace(string(h.head) + sep + string(h.tail))
}
