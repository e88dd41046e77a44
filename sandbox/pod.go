package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RunSandbox creates a ready sandbox for the pod config. An empty handler
// means the default one; an unknown handler is refused.
func (m *Manager) RunSandbox(cfg *runtimeapi.PodSandboxConfig, handler string) (Sandbox, error) {
	if err := validateSandboxConfig(cfg); err != nil {
		return Sandbox{}, err
	}
	if handler == "" {
		handler = m.opts.Handlers[0]
	}
	if !slices.Contains(m.opts.Handlers, handler) {
		return Sandbox{}, fmt.Errorf("runtime handler %q is not served by wasmcri (configured: %v): %w", handler, m.opts.Handlers, errdefs.ErrInvalidArgument)
	}
	sb := &Sandbox{
		ID:             newID(),
		Config:         cfg,
		RuntimeHandler: handler,
		State:          SandboxReady,
		CreatedAt:      time.Now(),
		LogDirectory:   cfg.GetLogDirectory(),
	}
	ownLogDir := sb.LogDirectory == ""
	if ownLogDir {
		sb.LogDirectory = m.defaultLogDir(sb.ID)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if other, taken := m.names[sb.Name()]; taken {
		return Sandbox{}, fmt.Errorf("sandbox name %q is taken by sandbox %s: %w", sb.Name(), other, errdefs.ErrAlreadyExists)
	}
	// A sandbox is only a record: kubelet owns its log directory, and
	// containers make their own roots.
	if ownLogDir {
		if err := os.MkdirAll(sb.LogDirectory, 0o755); err != nil {
			return Sandbox{}, fmt.Errorf("create sandbox log directory: %w", err)
		}
	}
	if err := m.store.putSandbox(sb); err != nil {
		return Sandbox{}, fmt.Errorf("persist sandbox: %w", err)
	}
	m.sandboxes[sb.ID] = sb
	m.names[sb.Name()] = sb.ID
	m.log.Info("sandbox ready", "sandbox", sb.ID, "pod", sb.Name(), "handler", handler)
	return *sb, nil
}

// StopSandbox ends every container of the sandbox at once (CRI: forcibly)
// and marks it not ready. Stopping a stopped or absent sandbox is not an
// error.
func (m *Manager) StopSandbox(id string) error {
	m.mu.Lock()
	sb, err := m.sandboxLocked(id)
	if errdefs.IsNotFound(err) {
		// CRI: idempotent; a sandbox already removed is stopped.
		m.mu.Unlock()
		return nil
	}
	if err != nil {
		m.mu.Unlock()
		return err
	}
	ids := m.containerIDsLocked(sb.ID)
	m.mu.Unlock()

	for _, cid := range ids {
		if err := m.StopContainer(cid, 0); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("stop container %s of sandbox %s: %w", cid, sb.ID, err)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if sb.State == SandboxNotReady {
		return nil
	}
	sb.State = SandboxNotReady
	if err := m.store.putSandbox(sb); err != nil {
		return fmt.Errorf("persist sandbox: %w", err)
	}
	m.log.Info("sandbox stopped", "sandbox", sb.ID)
	return nil
}

// RemoveSandbox stops and removes the sandbox and all its containers.
// Removing an absent sandbox is not an error (CRI: idempotent).
func (m *Manager) RemoveSandbox(id string) error {
	m.mu.Lock()
	sb, err := m.sandboxLocked(id)
	m.mu.Unlock()
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.StopSandbox(sb.ID); err != nil {
		return err
	}

	m.mu.Lock()
	ids := m.containerIDsLocked(sb.ID)
	m.mu.Unlock()
	for _, cid := range ids {
		if err := m.RemoveContainer(cid); err != nil {
			return fmt.Errorf("remove container %s of sandbox %s: %w", cid, sb.ID, err)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.store.delete(bucketSandboxes, sb.ID); err != nil {
		return fmt.Errorf("delete sandbox record: %w", err)
	}
	delete(m.sandboxes, sb.ID)
	delete(m.names, sb.Name())
	if sb.LogDirectory == m.defaultLogDir(sb.ID) {
		if err := os.RemoveAll(filepath.Dir(sb.LogDirectory)); err != nil {
			m.log.Warn("sandbox log directory not removed", "sandbox", sb.ID, "error", err)
		}
	}
	m.log.Info("sandbox removed", "sandbox", sb.ID)
	return nil
}

// containerIDsLocked lists the containers of a sandbox.
func (m *Manager) containerIDsLocked(sandboxID string) []string {
	var ids []string
	for _, c := range m.containers {
		if c.SandboxID == sandboxID {
			ids = append(ids, c.ID)
		}
	}
	return ids
}
