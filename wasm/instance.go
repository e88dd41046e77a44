package wasm

import (
	"bytes"
	"errors"
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
	// MemoryBytes bounds the sum of the instance's linear memories and
	// tables (see limits.go); 0 is the runtime's DefaultMemoryLimit.
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
	// Listeners are handed to the module at fd 3 and up (sockets.go); the
	// instance owns them from Start on.
	Listeners []Listener
}

// Result is how an instance ended.
type Result struct {
	ExitCode int32
	// Stopped is set when Stop ended the instance.
	Stopped bool
	// OOM is set when the instance failed at its memory limit.
	OOM bool
	// Trap is the trap message when the module trapped.
	Trap string
	// StartError says why the module could not be instantiated when Start
	// had already returned (exit code 128): the caller reports it as a
	// failure to start, not as the module's own.
	StartError string
	FinishedAt time.Time
}

// Stats are an instance's resource figures.
type Stats struct {
	// CPU is the CPU time the instance's thread has used; User and System
	// split it (at the kernel's 10ms accounting granularity).
	CPU, User, System time.Duration
	// MemoryBytes is the size of all its linear memories and tables (at
	// tableElementBytes per element), exported or not, as of its last
	// host call (poll_oneoff) or its start; MaxMemoryBytes the largest
	// seen.
	MemoryBytes, MaxMemoryBytes int64
	// CFS is the CPU cap's accounting, zero without a cap.
	CFS CFSStats
}

// Instance is one running module.
type Instance struct {
	// engine is the runtime's, shared with every other instance; ld the
	// loaded module, shared with the module's other instances.
	engine *wasmtime.Engine
	ld     *loaded
	store  *wasmtime.Store
	// stopFlag is read by the store's epoch deadline callback; it is
	// freed when the instance has finished, under mu.
	stopFlag stopFlag
	// origin is when its WASI context was made: wasmtime counts the
	// monotonic clock from there.
	origin time.Time
	stop   chan struct{}
	done   chan struct{}
	result Result
	stdin  *stdinPipe
	// socks are the instance's listeners and connections, nil without
	// listeners (sockets.go).
	socks *socketTable
	cpu   *cpuController
	id    string
	// shape is the module's number of memories and tables; defaultLimit
	// the memory limit of an instance given none.
	shape        moduleShape
	defaultLimit int64
	// helpers are the socket dispatch modules, for an instance with
	// listeners.
	helpers *socketHelpers

	// The instance's memories and tables, and their sizes as last
	// measured: only its own thread touches them (the store is not safe
	// for concurrent use).
	memories []*wasmtime.Memory
	tables   []*wasmtime.Table
	measured footprint

	memory    atomic.Int64
	maxMemory atomic.Int64
	// oomSaid is set when the module's stderr reported running out of
	// memory.
	oomSaid atomic.Bool
	// pendingMemoryLimit is a new limit for the instance's own thread to
	// apply at its next host call; -1 is none.
	pendingMemoryLimit atomic.Int64
	// asleep follows its sleeps in poll_oneoff, for Usage (usage.go).
	asleep sleepClock

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

// Start starts an instance of the compiled module under WASI and returns
// it before any of the module's code runs: instantiation (which runs the
// module's start section, if it has one) and then _start happen on the
// instance's own thread, under its CPU cap and reachable by Stop from the
// moment Start returns. Start itself only prepares what runs no guest
// code: the loaded module (shared with the module's other instances), the
// store, WASI, and the check that linking will succeed. Link errors
// (unknown imports, imports of the wrong type, no _start) are returned
// here; anything that fails later, instantiation included, is the
// instance's Result.
func (r *Runtime) Start(c Compiled, spec Spec) (_ *Instance, err error) {
	var helpers *socketHelpers
	if len(spec.Listeners) > 0 {
		if helpers, err = r.listenSpec(&spec); err != nil {
			closeListeners(spec.Listeners)
			return nil, err
		}
	}
	ld, err := r.acquire(c)
	if err != nil {
		closeListeners(spec.Listeners)
		return nil, err
	}
	if ld.linkErr != nil {
		closeListeners(spec.Listeners)
		r.release(ld)
		return nil, ld.linkErr
	}
	inst := &Instance{engine: r.engine, ld: ld, stop: make(chan struct{}), done: make(chan struct{}), cpu: r.cpu, id: spec.ID, limits: spec.Limits,
		shape: ld.shape, defaultLimit: max(r.opts.DefaultMemoryLimit, 0), stopFlag: newStopFlag()}
	inst.pendingMemoryLimit.Store(-1)
	store := wasmtime.NewStoreWithData(r.engine, inst)
	inst.store = store
	var sio *stdio
	defer func() {
		if err != nil {
			if inst.socks != nil {
				inst.socks.close()
			} else {
				closeListeners(spec.Listeners)
			}
			if sio != nil {
				sio.abandon()
			}
			store.Close()
			inst.stopFlag.free()
			r.release(ld)
		}
	}()
	// Any epoch increment (Stop makes them, of any instance) takes running
	// code, the start section's included, to the epoch deadline callback,
	// which ends it if this instance's flag is set and lets it go on
	// otherwise: both are set before anything runs.
	store.SetEpochDeadline(1)
	if err := stopOnFlag(store, inst.stopFlag); err != nil {
		return nil, err
	}
	if helpers != nil {
		if inst.socks, err = newSocketTable(spec.Listeners); err != nil {
			return nil, err
		}
		inst.helpers = helpers
	}
	inst.storeLimits(spec.Limits.MemoryBytes).apply(store)

	inst.origin = time.Now()
	if spec.Stderr != nil {
		spec.Stderr = &oomWatch{w: spec.Stderr, said: &inst.oomSaid}
	}
	var wasi *wasmtime.WasiConfig
	if wasi, sio, err = newWasiConfig(spec); err != nil {
		return nil, err
	}
	store.SetWasi(wasi)
	inst.stdin = sio.stdin

	copied := sio.start()
	started := make(chan error, 1)
	go inst.run(r, ld, sio, copied, started)
	if err := <-started; err != nil {
		// CPU caps are best effort: the runtime reports why it has none.
		r.opts.Logger.Warn("CPU limit not applied", "instance", spec.ID, "error", err)
	}
	return inst, nil
}

// run is the instance's thread: it instantiates the module, runs _start,
// and records how it ended.
func (i *Instance) run(r *Runtime, ld *loaded, sio *stdio, copied *sync.WaitGroup, started chan<- error) {
	// The instance owns this thread for its life: its CPU clock is the
	// instance's CPU time and its cgroup the instance's CPU cap. The
	// thread is never unlocked, so it ends with the instance.
	runtime.LockOSThread()
	i.mu.Lock()
	i.tid = unix.Gettid()
	err := i.cpu.apply(i.id, i.tid, i.limits)
	i.mu.Unlock()
	started <- err
	if hook := r.beforeInstantiate; hook != nil {
		hook(i)
	}

	res := i.execute(r.linker, ld)
	i.mu.Lock()
	// Closed before the instance is done, so its successor can bind the
	// same ports.
	i.socks.close()
	i.final, i.cpuFinal = i.ownStatsLocked(), true
	i.memory.Store(0)
	i.mu.Unlock()
	i.cpu.release(i.id, i.tid)
	// Closing the store closes wasmtime's ends of the pipes, so the
	// copies see EOF once everything written has been read.
	i.store.Close()
	sio.stdin.close()
	copied.Wait()
	res.FinishedAt = time.Now()
	i.mu.Lock()
	i.result = res
	i.finished = true
	// Stop no longer sets the flag, nor increments the epoch.
	i.stopFlag.free()
	i.mu.Unlock()
	r.release(ld)
	close(i.done)
}

// execute instantiates the module and calls its _start, unless the
// instance was stopped first.
func (i *Instance) execute(linker *wasmtime.Linker, ld *loaded) Result {
	select {
	case <-i.stop:
		// Stopped before anything ran: nothing will.
		return Result{ExitCode: 137, Stopped: true}
	default:
	}
	var instance *wasmtime.Instance
	var err error
	if i.socks != nil {
		instance, err = i.helpers.instantiate(i, ld.module)
	} else {
		instance, err = linker.Instantiate(i.store, ld.module)
	}
	if err != nil {
		return i.instantiationResult(err)
	}
	i.bind(instance)
	i.measure(i.store)
	_, runErr := instance.GetFunc(i.store, "_start").Call(i.store)
	i.measure(i.store)
	return i.resultOf(runErr)
}

// bind finds the instance's memories and tables by their reserved exports.
func (i *Instance) bind(instance *wasmtime.Instance) {
	for k := range i.shape.memories {
		if e := instance.GetExport(i.store, reservedMemoryName(k)); e != nil && e.Memory() != nil {
			i.memories = append(i.memories, e.Memory())
		}
	}
	for k := range i.shape.tables {
		if e := instance.GetExport(i.store, reservedTableName(k)); e != nil && e.Table() != nil {
			i.tables = append(i.tables, e.Table())
		}
	}
	i.measured = footprint{memories: make([]int64, len(i.memories)), tables: make([]int64, len(i.tables))}
}

// measure reads the sizes of the instance's memories and tables; only on
// its own thread, with s its store or the caller of a host function.
func (i *Instance) measure(s wasmtime.Storelike) {
	for k, m := range i.memories {
		i.measured.memories[k] = int64(m.DataSize(s))
	}
	for k, t := range i.tables {
		i.measured.tables[k] = int64(t.Size(s))
	}
	i.noteMemory(i.measured.total())
}

// storeLimits are the limiter's knobs for a memory limit of limit bytes
// (0: the default).
func (i *Instance) storeLimits(limit int64) storeLimits {
	l := limitsFor(i.effectiveLimit(limit), i.shape)
	if i.helpers != nil {
		// The dispatch and trampoline instances, and the dispatch table.
		l.instances += 2
		l.tables++
		if l.tableElements >= 0 {
			l.tableElements = max(l.tableElements, int64(i.helpers.slots))
		}
	}
	return l
}

func (i *Instance) effectiveLimit(limit int64) int64 {
	if limit > 0 {
		return limit
	}
	return i.defaultLimit
}

// instantiationResult is how an instance ends whose instantiation failed:
// its start section exited, trapped or was stopped, as _start may; or
// wasmtime refused to make it, which Start's link check did not foresee.
func (i *Instance) instantiationResult(err error) Result {
	i.mu.Lock()
	stopped := i.stopped
	i.mu.Unlock()
	var trap *wasmtime.Trap
	switch {
	case stopped || isExit(err) || errors.As(err, &trap):
		return i.resultOf(err)
	case isLimitError(err):
		// The module's initial memories or tables do not fit its limits.
		return Result{ExitCode: 137, OOM: true, Trap: trapMessage(err.Error())}
	}
	return Result{ExitCode: 128, StartError: "instantiate: " + trapMessage(err.Error())}
}

// limitErrors are how wasmtime's store limiter refuses to instantiate: an
// initial memory or table over the per-memory or per-table limit, or more
// instances, memories or tables than the store allows.
var limitErrors = []string{"exceeds memory limits", "exceeds table limits", "resource limit exceeded"}

func isLimitError(err error) bool {
	msg := err.Error()
	for _, s := range limitErrors {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// onHostCall runs at each of the instance's poll_oneoff calls, on the
// thread that owns its store: the safe moment to read its memory size and
// to change its memory limit.
func (i *Instance) onHostCall(caller *wasmtime.Caller) {
	if limit := i.pendingMemoryLimit.Swap(-1); limit >= 0 {
		i.storeLimits(limit).apply(i.store)
	}
	i.measure(caller)
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

// oomMargin is how close to its limit a failed instance's memory must be
// to call the failure an out-of-memory kill. wasmtime's limiter makes a
// denied memory.grow or table.grow return -1 without telling the host (its
// C API has no callback), so the evidence is indirect: the size a memory
// or table, or all of them, reached (Go's allocator fails within 1 MiB of
// the limit when growing step by step), or the language runtime saying so
// on stderr (one large allocation fails far below the limit); see oomWatch
// and footprint.atLimit.
func oomMargin(limit int64) int64 { return min(limit/8, 8<<20) }

// resultOf turns the outcome of _start (or of the start section) into an
// exit code, as a process's.
func (i *Instance) resultOf(err error) Result {
	i.mu.Lock()
	stopped, limit := i.stopped, i.effectiveLimit(i.limits.MemoryBytes)
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
	case res.ExitCode != 0 && limit > 0 && (i.measured.atLimit(limit, i.shape) || i.oomSaid.Load()):
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

// Stop interrupts the instance wherever it is: running wasm code (its
// stop flag, then an epoch increment that takes every running instance of
// the engine to its epoch deadline callback, where only this one ends;
// see interrupt.go), waiting in poll_oneoff, or reading its stdin. It
// returns at once; use Done to wait.
func (i *Instance) Stop() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.finished || i.stopped {
		return
	}
	i.stopped = true
	close(i.stop)
	i.stopFlag.set()
	i.engine.IncrementEpoch()
	// A wait for a socket ends when its wake fd is readable.
	i.socks.wakeUp()
	// A read of stdin blocks in the host; its end of file sends the module
	// back into wasm code, where the epoch deadline callback ends it.
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
	return i.statsLocked(user, system)
}

// ownStatsLocked is liveStatsLocked on the instance's own thread, which
// asks for its times in one system call instead of reading /proc.
func (i *Instance) ownStatsLocked() Stats {
	user, system := ownThreadTimes()
	return i.statsLocked(user, system)
}

func (i *Instance) statsLocked(user, system time.Duration) Stats {
	return Stats{
		CPU: threadCPU(i.tid), User: user, System: system,
		MemoryBytes: i.memory.Load(), MaxMemoryBytes: i.maxMemory.Load(),
		CFS: i.cpu.stat(i.id),
	}
}

// SetLimits changes a running instance's limits: the CPU cap at once, the
// memory limit (all the limiter's knobs, recomputed) at the instance's
// next host call (wasmtime's limiter may only be changed from the thread
// that runs the store).
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
