package sandbox

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
)

// PortForward would connect stream to a port of the pod. A Wasm pod has no
// network of its own yet: the only place its port could be dialled is the
// node's own loopback, where a pod author would reach node-local services
// (kubelet's ports, registries, debug endpoints) instead of the pod. So
// port-forward is refused, naming why, until pods have their own network
// namespace.
func (m *Manager) PortForward(ctx context.Context, sandboxID string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	sb, err := m.Sandbox(sandboxID)
	if err != nil {
		return err
	}
	return fmt.Errorf("port-forward to port %d of pod sandbox %s: wasmcri pods have no network of their own yet, and forwarding to the node's loopback would reach the node's services rather than the pod: %w",
		port, sb.ID, errdefs.ErrNotImplemented)
}
