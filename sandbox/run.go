package sandbox

import (
	"sync"

	"github.com/wasmcri/wasmcri/internal/crilog"
	"github.com/wasmcri/wasmcri/wasm"
)

// run is a started container's instance and its plumbing. A start sets it
// on the container (under the container's lock) before anything of it
// exists, so that a stop or remove racing the start finds it. Its fields
// are guarded by the container's lock.
type run struct {
	// recorded is closed once the exit is in the container's status (or
	// the start failed).
	recorded chan struct{}
	// live is the started instance; nil while the start is under way.
	live *live
	// stopAsked says a stop came; one that came before live existed is
	// applied as soon as it does.
	stopAsked bool
	// ending is set once the instance has ended: no exec starts then.
	ending bool
	// execs are the exec instances running in the container; execing
	// counts those starting or running, so that the container's
	// directories are released only after the last one ends.
	execs   map[*wasm.Instance]struct{}
	execing sync.WaitGroup
	// lastSample is the previous Stats reading, for the CPU rate.
	lastSample cpuSample
}

func newRun() *run {
	return &run{recorded: make(chan struct{}), execs: map[*wasm.Instance]struct{}{}}
}

// live is what a started container runs with.
type live struct {
	instance *wasm.Instance
	// pre are the preopened directories (root and directory mounts),
	// which exec instances share; files are the file mounts.
	pre   *preopens
	files []fileMount
	// log is the CRI log, for ReopenContainerLog; nil without a log path.
	log *crilog.Log
	// stdout and stderr fan output out to attached clients; stdin, when
	// the config asks for stdin, takes their input.
	stdout, stderr *outputHub
	stdin          *stdinHub
}

// stop interrupts the run: at once if its instance exists, else as soon
// as its start has made it. The container's lock is held.
func (r *run) stop() {
	r.stopAsked = true
	if r.live != nil {
		r.live.instance.Stop()
	}
}

// running is the started instance, or nil while none is (not started,
// still starting, or ended).
func (r *run) running() *live {
	if r == nil {
		return nil
	}
	return r.live
}
