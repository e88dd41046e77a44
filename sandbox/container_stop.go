package sandbox

import (
	"fmt"
	"time"

	"github.com/containerd/errdefs"
)

// StopContainer ends a running container. A Wasm module has no signal to
// catch, so there is no graceful phase: the instance is interrupted at
// once and timeout only bounds how long this call waits for it to end.
// Stopping a container that is not running, or is gone, is not an error.
func (m *Manager) StopContainer(id string, timeout time.Duration) error {
	c, err := m.containers.get(id)
	if errdefs.IsNotFound(err) {
		// CRI: idempotent; a container already removed is stopped.
		return nil
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	r := c.run
	if r != nil {
		r.stop()
	}
	c.mu.Unlock()
	if r == nil {
		return nil
	}
	wait := max(timeout, 10*time.Second)
	select {
	case <-r.recorded:
		return nil
	case <-time.After(wait):
		return fmt.Errorf("container %s did not end within %v of being interrupted: %w", id, wait, errdefs.ErrUnavailable)
	}
}
