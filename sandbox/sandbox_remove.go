package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
)

// RemoveSandbox stops and removes the sandbox, all its containers and its
// network namespace. Removing an absent sandbox is not an error (CRI:
// idempotent).
func (m *Manager) RemoveSandbox(ctx context.Context, id string) error {
	sb, err := m.sandboxes.get(id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.StopSandbox(ctx, sb.ID); err != nil {
		return err
	}
	for _, c := range m.containersOf(sb.ID) {
		if err := m.RemoveContainer(c.ID); err != nil {
			return fmt.Errorf("remove container %s of sandbox %s: %w", c.ID, sb.ID, err)
		}
	}
	sb.mu.Lock()
	err = m.forgetSandboxLocked(sb)
	gone := sb.Sandbox
	sb.mu.Unlock()
	if err != nil {
		return err
	}
	// Detached by the stop above; the namespace goes with the record. One
	// left by a crash between the two is reclaimed at start-up.
	m.releaseNetwork(gone)
	m.removeOwnLogDir(gone)
	m.log.Info("sandbox removed", "sandbox", sb.ID)
	return nil
}

// removeOwnLogDir removes the log directory wasmcri made for a sandbox
// kubelet gave none; kubelet's own it leaves to kubelet.
func (m *Manager) removeOwnLogDir(sb Sandbox) {
	if sb.LogDirectory != m.defaultLogDir(sb.ID) {
		return
	}
	if err := os.RemoveAll(filepath.Dir(sb.LogDirectory)); err != nil {
		m.log.Warn("sandbox log directory not removed", "sandbox", sb.ID, "error", err)
	}
}
