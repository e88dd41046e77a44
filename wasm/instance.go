package wasm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// Dir is a host directory the instance sees at Guest.
type Dir struct {
	Host     string
	Guest    string
	ReadOnly bool
}

// Spec says how to run one instance.
type Spec struct {
	Args       []string
	Env        []string // KEY=VALUE
	WorkingDir string
	Dirs       []Dir
	// Stdout and Stderr receive the streams and are closed at their end;
	// nil discards.
	Stdout, Stderr io.WriteCloser
	// PipeDir holds the named pipes wasmtime writes output into (WASI
	// output goes to file paths only).
	PipeDir string
	// MemoryLimit bounds each linear memory in bytes; 0 is no limit.
	MemoryLimit int64
}

// Result is how an instance ended.
type Result struct {
	ExitCode int32
	// Stopped is set when Stop ended the instance.
	Stopped bool
	// Trap is the trap message when the module trapped.
	Trap       string
	FinishedAt time.Time
}

// Instance is one running module.
type Instance struct {
	engine *wasmtime.Engine
	stop   chan struct{}
	done   chan struct{}
	result Result

	mu       sync.Mutex
	stopped  bool
	finished bool
}

// Start instantiates the compiled module under WASI and runs its _start
// in the background. Link errors (unknown imports, no _start) are returned
// here, before anything runs.
func (r *Runtime) Start(c Compiled, spec Spec) (_ *Instance, err error) {
	engine, mod, err := r.load(c)
	if err != nil {
		return nil, err
	}
	inst := &Instance{engine: engine, stop: make(chan struct{}), done: make(chan struct{})}
	store := wasmtime.NewStore(engine)
	var outs *outputs
	defer func() {
		if err != nil {
			if outs != nil {
				outs.abandon()
			}
			store.Close()
			mod.Close()
			engine.Close()
		}
	}()
	// Any epoch increment (only Stop makes one) interrupts running code.
	store.SetEpochDeadline(1)
	if spec.MemoryLimit > 0 {
		store.Limiter(spec.MemoryLimit, -1, -1, -1, -1)
	}

	origin := time.Now()
	var wasi *wasmtime.WasiConfig
	if wasi, outs, err = newWasiConfig(spec); err != nil {
		return nil, err
	}
	store.SetWasi(wasi)

	linker := wasmtime.NewLinker(engine)
	defer linker.Close()
	if err := linker.DefineWasi(); err != nil {
		return nil, err
	}
	if err := definePollOneoff(linker, inst.stop, origin); err != nil {
		return nil, err
	}
	instance, err := linker.Instantiate(store, mod)
	if err != nil {
		return nil, fmt.Errorf("instantiate: %s", firstLine(err.Error()))
	}
	start := instance.GetFunc(store, "_start")
	if start == nil {
		return nil, errors.New("the module exports no _start function: it is not a WASI command")
	}

	copied := outs.copy()
	go func() {
		_, err := start.Call(store)
		res := inst.resultOf(err)
		// Closing the store closes wasmtime's ends of the pipes, so the
		// copies see EOF once everything written has been read.
		store.Close()
		copied.Wait()
		res.FinishedAt = time.Now()
		mod.Close()
		inst.mu.Lock()
		inst.result = res
		inst.finished = true
		engine.Close()
		inst.mu.Unlock()
		close(inst.done)
	}()
	return inst, nil
}

// newWasiConfig sets argv, env, preopened directories and output pipes.
func newWasiConfig(spec Spec) (*wasmtime.WasiConfig, *outputs, error) {
	wasi := wasmtime.NewWasiConfig()
	wasi.SetArgv(spec.Args)
	keys, values := splitEnv(withWorkingDir(spec.Env, spec.WorkingDir))
	wasi.SetEnv(keys, values)
	for _, d := range spec.Dirs {
		dirPerms, filePerms := wasmtime.DIR_READ|wasmtime.DIR_WRITE, wasmtime.FILE_READ|wasmtime.FILE_WRITE
		if d.ReadOnly {
			dirPerms, filePerms = wasmtime.DIR_READ, wasmtime.FILE_READ
		}
		if err := wasi.PreopenDir(d.Host, d.Guest, dirPerms, filePerms); err != nil {
			wasi.Close()
			return nil, nil, fmt.Errorf("preopen %s at %s: %w", d.Host, d.Guest, err)
		}
	}
	outputs, err := openOutputs(wasi, spec)
	if err != nil {
		wasi.Close()
		return nil, nil, err
	}
	return wasi, outputs, nil
}

// resultOf turns the outcome of _start into an exit code, as a process's.
func (i *Instance) resultOf(err error) Result {
	i.mu.Lock()
	stopped := i.stopped
	i.mu.Unlock()
	if err == nil {
		return Result{ExitCode: 0}
	}
	var werr *wasmtime.Error
	if errors.As(err, &werr) {
		if code, ok := werr.ExitStatus(); ok {
			return Result{ExitCode: code}
		}
	}
	if stopped {
		// Killed from outside, reported as a SIGKILLed process is.
		return Result{ExitCode: 137, Stopped: true}
	}
	return Result{ExitCode: 1, Trap: trapMessage(err.Error())}
}

// trapMessage keeps the cause of a wasmtime error and drops the backtrace.
func trapMessage(s string) string {
	if i := strings.Index(s, "Caused by:"); i >= 0 {
		fields := strings.Fields(s[i+len("Caused by:"):])
		return strings.Join(fields, " ")
	}
	return firstLine(s)
}

// Stop interrupts the instance wherever it is: running wasm code (through
// its engine's epoch) or waiting in poll_oneoff. It returns at once; use
// Done to wait.
func (i *Instance) Stop() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.finished || i.stopped {
		return
	}
	i.stopped = true
	close(i.stop)
	i.engine.IncrementEpoch()
}

// Done is closed when the instance has ended and its output is written.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Result is how the instance ended; valid once Done is closed.
func (i *Instance) Result() Result {
	<-i.done
	return i.result
}

// withWorkingDir passes the working directory the way WASI programs read
// it: preview1 has no cwd, so Go and wasi-libc start from $PWD.
func withWorkingDir(env []string, dir string) []string {
	if dir == "" {
		return env
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "PWD=") {
			return env
		}
	}
	return append(env[:len(env):len(env)], "PWD="+dir)
}

func splitEnv(env []string) (keys, values []string) {
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		keys = append(keys, k)
		values = append(values, v)
	}
	return keys, values
}

// outputs are the read ends of the stdout/stderr pipes.
type outputs struct {
	readers []*os.File
	writers []io.WriteCloser
}

// openOutputs makes a named pipe per stream, opens our read end first (so
// wasmtime's open for writing does not block) and points WASI at them.
func openOutputs(wasi *wasmtime.WasiConfig, spec Spec) (*outputs, error) {
	o := &outputs{}
	for _, s := range []struct {
		name string
		w    io.WriteCloser
		set  func(string) error
	}{{"stdout", spec.Stdout, wasi.SetStdoutFile}, {"stderr", spec.Stderr, wasi.SetStderrFile}} {
		if s.w == nil {
			continue
		}
		p := filepath.Join(spec.PipeDir, s.name)
		os.Remove(p)
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			o.abandon()
			return nil, fmt.Errorf("create %s pipe: %w", s.name, err)
		}
		r, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			o.abandon()
			return nil, fmt.Errorf("open %s pipe: %w", s.name, err)
		}
		o.readers = append(o.readers, r)
		o.writers = append(o.writers, s.w)
		if err := s.set(p); err != nil {
			o.abandon()
			return nil, fmt.Errorf("attach %s: %w", s.name, err)
		}
	}
	return o, nil
}

// copy moves each stream into its writer until EOF, then closes the writer.
func (o *outputs) copy() *sync.WaitGroup {
	var wg sync.WaitGroup
	for i, r := range o.readers {
		wg.Add(1)
		go func(r *os.File, w io.WriteCloser) {
			defer wg.Done()
			io.Copy(w, r)
			r.Close()
			w.Close()
		}(r, o.writers[i])
	}
	return &wg
}

func (o *outputs) abandon() {
	for _, r := range o.readers {
		r.Close()
	}
	for _, w := range o.writers {
		w.Close()
	}
}
