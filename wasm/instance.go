package wasm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"
)

// Dir is a host directory the instance sees at Guest.
type Dir struct {
	Host     string
	Guest    string
	ReadOnly bool
}

// Limits bound an instance's resources.
type Limits struct {
	// MemoryBytes bounds each linear memory; 0 is no limit.
	MemoryBytes int64
	// CPUQuota and CPUPeriod (microseconds) cap CPU time per period, as
	// CFS does; a quota of 0 or less is no cap.
	CPUQuota, CPUPeriod int64
}

// Spec says how to run one instance.
type Spec struct {
	// ID names the instance in limits bookkeeping (its CPU cgroup).
	ID         string
	Args       []string
	Env        []string // KEY=VALUE
	WorkingDir string
	Dirs       []Dir
	// Stdin feeds the module's standard input until EOF; nil is empty.
	Stdin io.Reader
	// Stdout and Stderr receive the streams and are closed at their end;
	// nil discards.
	Stdout, Stderr io.WriteCloser
	Limits         Limits
}

// Result is how an instance ended.
type Result struct {
	ExitCode int32
	// Stopped is set when Stop ended the instance.
	Stopped bool
	// OOM is set when the instance failed at its memory limit.
	OOM bool
	// Trap is the trap message when the module trapped.
	Trap       string
	FinishedAt time.Time
}

// Stats are an instance's resource figures.
type Stats struct {
	// CPU is the CPU time the instance's thread has used; User and System
	// split it (at the kernel's 10ms accounting granularity).
	CPU, User, System time.Duration
	// MemoryBytes is the size of its linear memory, as of its last host
	// call (poll_oneoff) or its start; MaxMemoryBytes the largest seen.
	MemoryBytes, MaxMemoryBytes int64
	// CFS is the CPU cap's accounting, zero without a cap.
	CFS CFSStats
}

// Instance is one running module.
type Instance struct {
	engine *wasmtime.Engine
	store  *wasmtime.Store
	// origin is when its WASI context was made: wasmtime counts the
	// monotonic clock from there.
	origin time.Time
	stop   chan struct{}
	done   chan struct{}
	result Result
	stdin  *stdinPipe
	cpu    *cpuController
	id     string

	memory    atomic.Int64
	maxMemory atomic.Int64
	// oomSaid is set when the module's stderr reported running out of
	// memory.
	oomSaid atomic.Bool
	// pendingMemoryLimit is a new limit for the instance's own thread to
	// apply at its next host call; -1 is none.
	pendingMemoryLimit atomic.Int64

	mu       sync.Mutex
	limits   Limits
	stopped  bool
	finished bool
	tid      int
	// final is the thread's figures read just before it ended; the thread
	// ID may belong to another thread after that.
	final    Stats
	cpuFinal bool
}

// Start instantiates the compiled module under WASI and runs its _start
// in the background. Link errors (unknown imports, no _start) are returned
// here, before anything runs.
func (r *Runtime) Start(c Compiled, spec Spec) (_ *Instance, err error) {
	ld, err := r.acquire(c)
	if err != nil {
		return nil, err
	}
	inst := &Instance{engine: ld.engine, stop: make(chan struct{}), done: make(chan struct{}), cpu: r.cpu, id: spec.ID, limits: spec.Limits}
	inst.pendingMemoryLimit.Store(-1)
	store := wasmtime.NewStoreWithData(ld.engine, inst)
	inst.store = store
	var sio *stdio
	defer func() {
		if err != nil {
			if sio != nil {
				sio.abandon()
			}
			store.Close()
			r.release(ld)
		}
	}()
	// Any epoch increment (only Stop makes one) interrupts running code.
	store.SetEpochDeadline(1)
	if spec.Limits.MemoryBytes > 0 {
		store.Limiter(spec.Limits.MemoryBytes, -1, -1, -1, -1)
	}

	inst.origin = time.Now()
	if spec.Limits.MemoryBytes > 0 && spec.Stderr != nil {
		spec.Stderr = &oomWatch{w: spec.Stderr, said: &inst.oomSaid}
	}
	var wasi *wasmtime.WasiConfig
	if wasi, sio, err = newWasiConfig(spec); err != nil {
		return nil, err
	}
	store.SetWasi(wasi)
	inst.stdin = sio.stdin

	instance, err := ld.linker.Instantiate(store, ld.module)
	if err != nil {
		return nil, fmt.Errorf("instantiate: %s", firstLine(err.Error()))
	}
	start := instance.GetFunc(store, "_start")
	if start == nil {
		return nil, errors.New("the module exports no _start function: it is not a WASI command")
	}
	memory := func() int64 {
		if m := instance.GetExport(store, "memory"); m != nil && m.Memory() != nil {
			return int64(m.Memory().DataSize(store))
		}
		return 0
	}
	inst.noteMemory(memory())

	copied := sio.start()
	started := make(chan error, 1)
	go func() {
		// The instance owns this thread for its life: its CPU clock is the
		// instance's CPU time and its cgroup the instance's CPU cap. The
		// thread is never unlocked, so it ends with the instance.
		runtime.LockOSThread()
		inst.mu.Lock()
		inst.tid = unix.Gettid()
		err := inst.cpu.apply(inst.id, inst.tid, inst.limits)
		inst.mu.Unlock()
		started <- err

		_, runErr := start.Call(store)
		finalMemory := memory()
		inst.noteMemory(finalMemory)
		res := inst.resultOf(runErr, finalMemory)
		inst.mu.Lock()
		inst.final, inst.cpuFinal = inst.liveStatsLocked(), true
		inst.memory.Store(0)
		inst.mu.Unlock()
		inst.cpu.release(inst.id, inst.tid)
		// Closing the store closes wasmtime's ends of the pipes, so the
		// copies see EOF once everything written has been read.
		store.Close()
		sio.stdin.close()
		copied.Wait()
		res.FinishedAt = time.Now()
		inst.mu.Lock()
		inst.result = res
		inst.finished = true
		inst.mu.Unlock()
		// Stop can no longer reach the engine: another instance may have it.
		r.release(ld)
		close(inst.done)
	}()
	if err := <-started; err != nil {
		// CPU caps are best effort: the runtime reports why it has none.
		r.opts.Logger.Warn("CPU limit not applied", "instance", spec.ID, "error", err)
	}
	return inst, nil
}

// onHostCall runs at each of the instance's poll_oneoff calls, on the
// thread that owns its store: the safe moment to read its memory size and
// to change its memory limit.
func (i *Instance) onHostCall(caller *wasmtime.Caller) {
	if limit := i.pendingMemoryLimit.Swap(-1); limit >= 0 {
		i.store.Limiter(limitOrNone(limit), -1, -1, -1, -1)
	}
	if m := caller.GetExport("memory"); m != nil && m.Memory() != nil {
		i.noteMemory(int64(m.Memory().DataSize(caller)))
	}
}

func (i *Instance) noteMemory(n int64) {
	i.memory.Store(n)
	for {
		old := i.maxMemory.Load()
		if n <= old || i.maxMemory.CompareAndSwap(old, n) {
			return
		}
	}
}

// limitOrNone turns 0 into wasmtime's "no limit" (-1).
func limitOrNone(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
}

// oomMargin is how close to its limit a failed instance's memory must be
// to call the failure an out-of-memory kill. wasmtime's limiter makes a
// denied memory.grow return -1 without telling the host (its C API has no
// callback), so the evidence is indirect: the size the memory reached (Go's
// allocator fails within 1 MiB of the limit when growing step by step), or
// the language runtime saying so on stderr (one large allocation fails far
// below the limit); see oomWatch.
func oomMargin(limit int64) int64 { return min(limit/8, 8<<20) }

// resultOf turns the outcome of _start into an exit code, as a process's.
func (i *Instance) resultOf(err error, finalMemory int64) Result {
	i.mu.Lock()
	stopped, limit := i.stopped, i.limits.MemoryBytes
	i.mu.Unlock()
	if err == nil {
		return Result{ExitCode: 0}
	}
	res := Result{ExitCode: 1}
	var werr *wasmtime.Error
	if errors.As(err, &werr) {
		if code, ok := werr.ExitStatus(); ok {
			res = Result{ExitCode: code}
		}
	}
	switch {
	case stopped && res.ExitCode != 0 && !isExit(err):
		// Killed from outside, reported as a SIGKILLed process is.
		return Result{ExitCode: 137, Stopped: true}
	case res.ExitCode != 0 && limit > 0 && (finalMemory+oomMargin(limit) >= limit || i.oomSaid.Load()):
		// As the kernel's OOM killer would: SIGKILL, exit code 137.
		return Result{ExitCode: 137, OOM: true, Trap: trapOf(err)}
	case isExit(err):
		return res
	}
	return Result{ExitCode: 1, Trap: trapOf(err)}
}

func isExit(err error) bool {
	var werr *wasmtime.Error
	if errors.As(err, &werr) {
		_, ok := werr.ExitStatus()
		return ok
	}
	return false
}

func trapOf(err error) string {
	if isExit(err) {
		return ""
	}
	return trapMessage(err.Error())
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
// its engine's epoch), waiting in poll_oneoff, or reading its stdin. It
// returns at once; use Done to wait.
func (i *Instance) Stop() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.finished || i.stopped {
		return
	}
	i.stopped = true
	close(i.stop)
	i.engine.IncrementEpoch()
	// A read of stdin blocks in the host; its end of file sends the module
	// back into wasm code, where the epoch deadline traps it.
	i.stdin.close()
}

// Done is closed when the instance has ended and its output is written.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Result is how the instance ended; valid once Done is closed.
func (i *Instance) Result() Result {
	<-i.done
	return i.result
}

// Stats reports the instance's CPU time and memory.
func (i *Instance) Stats() Stats {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cpuFinal || i.tid == 0 {
		st := i.final
		st.MemoryBytes, st.MaxMemoryBytes = i.memory.Load(), i.maxMemory.Load()
		return st
	}
	return i.liveStatsLocked()
}

// liveStatsLocked reads the running thread's clocks; i.mu is held.
func (i *Instance) liveStatsLocked() Stats {
	user, system := threadTimes(i.tid)
	return Stats{
		CPU: threadCPU(i.tid), User: user, System: system,
		MemoryBytes: i.memory.Load(), MaxMemoryBytes: i.maxMemory.Load(),
		CFS: i.cpu.stat(i.id),
	}
}

// SetLimits changes a running instance's limits: the CPU cap at once, the
// memory limit at the instance's next host call (wasmtime's limiter may
// only be changed from the thread that runs the store).
func (i *Instance) SetLimits(l Limits) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.finished {
		return nil
	}
	i.limits = l
	i.pendingMemoryLimit.Store(max(l.MemoryBytes, 0))
	if i.tid == 0 {
		return nil
	}
	return i.cpu.apply(i.id, i.tid, l)
}

// oomMessages are what language runtimes print when an allocation fails:
// Go ("fatal error: out of memory"), Rust ("memory allocation of N bytes
// failed"), and wasi-libc programs using perror/strerror on ENOMEM.
var oomMessages = [][]byte{[]byte("out of memory"), []byte("memory allocation of"), []byte("Cannot allocate memory")}

// oomWatch passes stderr through, noting an out-of-memory report.
type oomWatch struct {
	w    io.WriteCloser
	said *atomic.Bool
	tail []byte // the end of the previous write, for messages split across writes
}

func (o *oomWatch) Write(p []byte) (int, error) {
	if !o.said.Load() {
		buf := append(o.tail, p...)
		for _, m := range oomMessages {
			if bytes.Contains(buf, m) {
				o.said.Store(true)
			}
		}
		o.tail = append(o.tail[:0], buf[max(0, len(buf)-32):]...)
	}
	return o.w.Write(p)
}

func (o *oomWatch) Close() error { return o.w.Close() }
