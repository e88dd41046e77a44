package sandbox

import (
	"fmt"
	"math"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/wasm"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Resources are the limits a container runs under, from its config and
// later UpdateContainerResources calls.
type Resources struct {
	MemoryLimitBytes int64 `json:"memoryLimitBytes,omitempty"`
	CPUQuota         int64 `json:"cpuQuota,omitempty"`
	CPUPeriod        int64 `json:"cpuPeriod,omitempty"`
	CPUShares        int64 `json:"cpuShares,omitempty"`
}

func resourcesFrom(r *runtimeapi.LinuxContainerResources) Resources {
	return Resources{
		MemoryLimitBytes: r.GetMemoryLimitInBytes(),
		CPUQuota:         r.GetCpuQuota(),
		CPUPeriod:        r.GetCpuPeriod(),
		CPUShares:        r.GetCpuShares(),
	}
}

func (r Resources) limits() wasm.Limits {
	return wasm.Limits{MemoryBytes: r.MemoryLimitBytes, CPUQuota: r.CPUQuota, CPUPeriod: r.CPUPeriod}
}

// CRI is the resources as ContainerStatus reports them.
func (r Resources) CRI() *runtimeapi.ContainerResources {
	return &runtimeapi.ContainerResources{Linux: &runtimeapi.LinuxContainerResources{
		MemoryLimitInBytes: r.MemoryLimitBytes,
		CpuQuota:           r.CPUQuota,
		CpuPeriod:          r.CPUPeriod,
		CpuShares:          r.CPUShares,
	}}
}

func checkResources(r Resources) error {
	if r.MemoryLimitBytes < 0 || r.CPUQuota < -1 || r.CPUPeriod < 0 {
		return fmt.Errorf("negative resource limit %+v: %w", r, errdefs.ErrInvalidArgument)
	}
	// The kernel refuses a CFS quota under 1ms.
	if r.CPUQuota > 0 && r.CPUQuota < 1000 {
		return fmt.Errorf("cpu_quota %d is below the kernel's minimum of 1000 microseconds: %w", r.CPUQuota, errdefs.ErrInvalidArgument)
	}
	if r.CPUQuota > 0 && r.CPUPeriod > 0 && (r.CPUPeriod < 1000 || r.CPUPeriod > 1000000) {
		return fmt.Errorf("cpu_period %d is outside 1000..1000000 microseconds: %w", r.CPUPeriod, errdefs.ErrInvalidArgument)
	}
	return nil
}

// CPUCapsUnavailable says why CPU quotas are not enforced on this node, or
// is nil when they are.
func (m *Manager) CPUCapsUnavailable() error { return m.runtime.CPUCapsUnavailable }

// secondsToDuration converts a CRI timeout, saturating rather than
// overflowing into a negative (already expired) duration.
func secondsToDuration(s int64) time.Duration {
	if s > int64(math.MaxInt64/time.Second) {
		return math.MaxInt64
	}
	return time.Duration(s) * time.Second
}
