package sandbox

import (
	"fmt"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// UpdateResources changes a container's limits; a running instance gets
// the CPU cap at once and the memory limit at its next host call.
func (m *Manager) UpdateResources(id string, r *runtimeapi.LinuxContainerResources) error {
	res := resourcesFrom(r)
	if err := checkResources(res); err != nil {
		return err
	}
	c, err := m.containers.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err = m.updateContainerLocked(c, request, noEvent, func(s *ContainerStatus) error {
		if s.State == ContainerExited {
			return fmt.Errorf("container %s has exited: %w", c.ID, errdefs.ErrFailedPrecondition)
		}
		s.Resources = res
		return nil
	})
	if err != nil {
		return err
	}
	if l := c.run.running(); l != nil {
		// A run still starting picks the new limits up when it has started.
		if err := l.instance.SetLimits(res.limits()); err != nil {
			m.log.Warn("CPU limit not applied", "container", c.ID, "error", err)
		}
	}
	m.log.Info("container resources updated", "container", c.ID, "resources", res)
	return nil
}
