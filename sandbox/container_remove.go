package sandbox

import (
	"github.com/containerd/errdefs"
)

// RemoveContainer stops the container if needed and deletes it with its
// writable root. Its log file stays: kubelet owns and removes it.
// Removing an absent container is not an error (CRI: idempotent).
func (m *Manager) RemoveContainer(id string) error {
	c, err := m.containers.get(id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	// No start begins from here on; one under way is stopped below.
	c.mu.Lock()
	c.removing = true
	c.mu.Unlock()
	if err := m.StopContainer(c.ID, 0); err != nil {
		c.mu.Lock()
		c.removing = false
		c.mu.Unlock()
		return err
	}
	c.mu.Lock()
	err = m.forgetContainerLocked(c)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	// The record is gone, so a crash from here on leaves a root that
	// start-up reclaims.
	m.releaseRoot(c)
	m.log.Info("container removed", "container", c.ID)
	return nil
}
