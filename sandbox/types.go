// Package sandbox keeps pods (sandboxes) and their containers: their state
// machines, their directories, their persistence in bbolt, and the
// lifecycle that starts and stops Wasm instances for them.
package sandbox

import (
	"strconv"
	"sync"
	"time"

	"github.com/wasmcri/wasmcri/internal/crilog"
	"github.com/wasmcri/wasmcri/wasm"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// SandboxState is a pod sandbox's state, as CRI knows it.
type SandboxState string

const (
	SandboxReady    SandboxState = "ready"
	SandboxNotReady SandboxState = "notready"
)

// ContainerState is a container's state, as CRI knows it.
type ContainerState string

const (
	ContainerCreated ContainerState = "created"
	ContainerRunning ContainerState = "running"
	ContainerExited  ContainerState = "exited"
)

// Reasons a container reports when it has exited.
const (
	ReasonCompleted = "Completed"
	ReasonError     = "Error"
	// ReasonOOMKilled is an instance that failed at its memory limit.
	ReasonOOMKilled = "OOMKilled"
	// ReasonStartError is a module that could not be instantiated.
	ReasonStartError = "StartError"
	// ReasonDaemonRestarted is a container that was running when the daemon
	// stopped or died: its instance lived in the daemon and ended with it.
	ReasonDaemonRestarted = "DaemonRestarted"
)

// Sandbox is one pod. A Wasm sandbox has no process of its own: it is a
// scope of directories, logs and limits its containers run in.
type Sandbox struct {
	ID             string                       `json:"id"`
	Config         *runtimeapi.PodSandboxConfig `json:"-"`
	RuntimeHandler string                       `json:"runtimeHandler"`
	State          SandboxState                 `json:"state"`
	CreatedAt      time.Time                    `json:"createdAt"`
	// LogDirectory is where container log paths are relative to.
	LogDirectory string `json:"logDirectory"`
}

// Name is the sandbox's reserved name: one sandbox per pod attempt.
func (s *Sandbox) Name() string {
	md := s.Config.GetMetadata()
	return md.GetNamespace() + "/" + md.GetName() + "/" + md.GetUid() + "/" + itoa(md.GetAttempt())
}

// Container is one module instance (run once) inside a sandbox.
type Container struct {
	ID        string                      `json:"id"`
	SandboxID string                      `json:"sandboxId"`
	Config    *runtimeapi.ContainerConfig `json:"-"`
	// ImageRef is the image as the container config names it (kubelet
	// passes the image ID); ImageName is the image's first tag for display;
	// ImageID and ImageDigestRef identify what was resolved at creation.
	ImageRef       string `json:"imageRef"`
	ImageName      string `json:"imageName"`
	ImageID        string `json:"imageId"`
	ImageDigestRef string `json:"imageDigestRef"`
	ModuleDigest   string `json:"moduleDigest"`

	// What the instance runs with, fixed at creation.
	Args       []string `json:"args"`
	Env        []string `json:"env"`
	WorkingDir string   `json:"workingDir"`
	// LogPath is absolute, or "" when the config asks for no log.
	LogPath string `json:"logPath"`

	State      ContainerState `json:"state"`
	CreatedAt  time.Time      `json:"createdAt"`
	StartedAt  time.Time      `json:"startedAt"`
	FinishedAt time.Time      `json:"finishedAt"`
	ExitCode   int32          `json:"exitCode"`
	Reason     string         `json:"reason"`
	Message    string         `json:"message"`
	Resources  Resources      `json:"resources"`
	// CPU is the CPU time the container's instance used, once it ended.
	CPU time.Duration `json:"cpuNanos"`

	run *run
	// removing refuses a start racing RemoveContainer.
	removing bool
}

// run is a started container's instance and its plumbing. It is set on
// the container (under the manager's lock) before anything of it exists,
// so that a stop or remove racing the start finds it.
type run struct {
	// recorded is closed once the exit is in the container's fields (or
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

// snapshot is a copy of the container safe to hand out.
func (c *Container) snapshot() Container {
	cp := *c
	cp.run = nil
	return cp
}

// Name is the container's reserved name within its sandbox.
func (c *Container) Name() string {
	md := c.Config.GetMetadata()
	return c.SandboxID + "/" + md.GetName() + "/" + itoa(md.GetAttempt())
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
