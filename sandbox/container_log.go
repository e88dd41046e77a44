package sandbox

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// ReopenLog makes a running container write its log to a new file at its
// log path, after kubelet has moved the old one away to rotate it.
func (m *Manager) ReopenLog(id string) error {
	c, err := m.containers.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.run.running()
	if l == nil {
		return fmt.Errorf("container %s is %s; only a running container's log can be reopened: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	if l.log == nil {
		return fmt.Errorf("container %s has no log path: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	return l.log.Reopen()
}
