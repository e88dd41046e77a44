package sandbox

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RunSandbox creates a ready sandbox for the pod config: unless the pod
// uses the node's network, with a network namespace of its own attached
// to the pod network (network.go). An empty handler means the default
// one; an unknown handler is refused.
func (m *Manager) RunSandbox(ctx context.Context, cfg *runtimeapi.PodSandboxConfig, handler string) (_ Sandbox, err error) {
	if err := validateSandboxConfig(cfg); err != nil {
		return Sandbox{}, err
	}
	if handler == "" {
		handler = m.opts.Handlers[0]
	}
	if !slices.Contains(m.opts.Handlers, handler) {
		return Sandbox{}, fmt.Errorf("runtime handler %q is not served by wasmcri (configured: %v): %w", handler, m.opts.Handlers, errdefs.ErrInvalidArgument)
	}
	sb := &sandboxEntry{Sandbox: Sandbox{
		ID:             newID(),
		Config:         cfg,
		RuntimeHandler: handler,
		State:          SandboxReady,
		CreatedAt:      time.Now(),
		LogDirectory:   cfg.GetLogDirectory(),
	}}
	// A sandbox is a record and, on the pod network, a namespace: kubelet
	// owns its log directory, and containers make their own roots.
	// Without a log directory from kubelet, it gets one of its own, made
	// by the first container that logs (crilog.Open) and removed with the
	// sandbox; one left by a crash is reclaimed at the next start-up.
	if sb.LogDirectory == "" {
		sb.LogDirectory = m.defaultLogDir(sb.ID)
	}
	// The name first: a second RunPodSandbox of the same pod attempt is
	// refused before it costs a network.
	if other, ok := m.names.reserve(sb.Name(), sb.ID); !ok {
		return Sandbox{}, fmt.Errorf("sandbox name %q is taken by sandbox %s: %w", sb.Name(), other, errdefs.ErrAlreadyExists)
	}
	defer func() {
		if err != nil {
			m.names.release(sb.Name())
		}
	}()
	if !HostNetwork(cfg) {
		if err := m.attachNetwork(ctx, sb); err != nil {
			return Sandbox{}, err
		}
		defer func() {
			if err != nil {
				m.releaseNetwork(sb.Sandbox)
			}
		}()
	}
	if err := m.addSandbox(sb); err != nil {
		m.removeOwnLogDir(sb.Sandbox)
		return Sandbox{}, err
	}
	m.log.Info("sandbox ready", "sandbox", sb.ID, "pod", sb.Name(), "handler", handler, "ips", sb.IPs)
	return sb.Sandbox, nil
}
