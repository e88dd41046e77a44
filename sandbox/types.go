// Package sandbox keeps pods (sandboxes) and their containers: their state
// machines, their directories, their persistence in bbolt, and the
// lifecycle that starts and stops Wasm instances for them.
package sandbox

import (
	"strconv"
	"sync"
	"time"

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
	// NetNS is the pod's network namespace (a pinned file named by the
	// sandbox ID), "" for a pod on the node's network; IPs are its
	// addresses on the pod network, IPv4 first, until NetworkDetached
	// (StopPodSandbox ran CNI DEL).
	NetNS           string   `json:"netns,omitempty"`
	IPs             []string `json:"ips,omitempty"`
	NetworkDetached bool     `json:"networkDetached,omitempty"`
	// NetworkID is the CNI container ID the namespace was attached under
	// when it is not the sandbox's (one attached ahead of need).
	NetworkID string `json:"networkId,omitempty"`
}

// cniID is the CNI container ID of the sandbox's attachment.
func (s *Sandbox) cniID() string {
	if s.NetworkID != "" {
		return s.NetworkID
	}
	return s.ID
}

// HostNetwork says whether the pod config asks for the node's network.
func HostNetwork(cfg *runtimeapi.PodSandboxConfig) bool {
	return cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE
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
	// RootImage is the image whose unpacked files the root stacks its
	// writable layer over; "" for a root of its own (an artifact's).
	RootImage string `json:"rootImage,omitempty"`

	// What the instance runs with, fixed at creation.
	Args       []string `json:"args"`
	Env        []string `json:"env"`
	WorkingDir string   `json:"workingDir"`
	// Ports are the TCP ports bound for the module at each start
	// (listeners.go).
	Ports []Port `json:"ports,omitempty"`
	// LogPath is absolute, or "" when the config asks for no log.
	LogPath   string    `json:"logPath"`
	CreatedAt time.Time `json:"createdAt"`

	// ContainerStatus is what changes over the container's life; the
	// fields above are fixed at creation.
	ContainerStatus
}

// ContainerStatus is the part of a container that changes: its state, how
// it ended and its limits. Its fields are stored inline in the record.
type ContainerStatus struct {
	State      ContainerState `json:"state"`
	StartedAt  time.Time      `json:"startedAt"`
	FinishedAt time.Time      `json:"finishedAt"`
	ExitCode   int32          `json:"exitCode"`
	Reason     string         `json:"reason"`
	Message    string         `json:"message"`
	Resources  Resources      `json:"resources"`
	// CPU is the CPU time the container's instance used, once it ended.
	CPU time.Duration `json:"cpuNanos"`
}

// Name is the container's reserved name within its sandbox.
func (c *Container) Name() string {
	md := c.Config.GetMetadata()
	return c.SandboxID + "/" + md.GetName() + "/" + itoa(md.GetAttempt())
}

// sandboxEntry is a sandbox in the manager's care. Its lock guards State
// and removed; the rest of Sandbox is fixed at creation and read without
// it. A container is created or
// started only under its sandbox's lock, so stopping a sandbox (which
// marks it not ready under that lock first) leaves no container to start.
type sandboxEntry struct {
	mu sync.Mutex
	Sandbox
	// removed says the record is gone: nothing persists it again.
	removed bool
}

// containerEntry is a container in the manager's care. Its lock guards
// ContainerStatus, run and the flags below; the rest of Container (ID,
// config, image, command line) is fixed at creation and read without it.
type containerEntry struct {
	mu sync.Mutex
	Container
	// run is the container's instance from the moment a start claims it
	// until its exit is recorded; nil otherwise.
	run *run
	// removing refuses a start racing RemoveContainer; removed says the
	// record is gone, so a late exit is neither persisted nor announced.
	removing, removed bool
	// holdsRoot says this run of the daemon holds RootImage's files for
	// the container (roots.go); volumeHolds are the images whose files it
	// holds for the container's image volumes (mounts.go).
	holdsRoot   bool
	volumeHolds []string
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
