package sandbox

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
)

// StopSandbox marks the sandbox not ready, ends every container of it at
// once (CRI: forcibly), then takes the pod off the pod network (CNI DEL);
// its namespace stays until RemoveSandbox. Marking it first means no
// container is created or started in it from then on. Stopping a stopped
// or absent sandbox is not an error; a second stop ends what the first
// could not.
func (m *Manager) StopSandbox(ctx context.Context, id string) error {
	sb, err := m.sandboxes.get(id)
	if errdefs.IsNotFound(err) {
		// CRI: idempotent; a sandbox already removed is stopped.
		return nil
	}
	if err != nil {
		return err
	}
	sb.mu.Lock()
	wasReady := sb.State == SandboxReady
	err = m.setSandboxStateLocked(sb, SandboxNotReady)
	sb.mu.Unlock()
	if err != nil {
		return err
	}
	for _, c := range m.containersOf(sb.ID) {
		if err := m.StopContainer(c.ID, 0); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("stop container %s of sandbox %s: %w", c.ID, sb.ID, err)
		}
	}
	if err := m.detachNetwork(ctx, sb); err != nil {
		return err
	}
	if wasReady {
		m.log.Info("sandbox stopped", "sandbox", sb.ID)
	}
	return nil
}
