package sandbox

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/internal/netns"
)

// portForwardDialTimeout bounds connecting to the pod's port.
const portForwardDialTimeout = 10 * time.Second

// PortForward connects stream to port on the pod's own loopback, dialled
// from inside the pod's network namespace (as containerd does), and copies
// both ways until either side ends. A pod without a namespace of its own
// is refused: its port could only be dialled on the node's loopback, where
// the caller would reach the node's services (kubelet's ports, registries,
// debug endpoints) rather than the pod's.
func (m *Manager) PortForward(ctx context.Context, sandboxID string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	sb, err := m.Sandbox(sandboxID)
	if err != nil {
		return err
	}
	if port <= 0 || port > 65535 {
		return fmt.Errorf("port-forward to port %d: not a TCP port: %w", port, errdefs.ErrInvalidArgument)
	}
	if sb.NetNS == "" {
		return fmt.Errorf("port-forward to port %d of pod sandbox %s: the pod has no network of its own (it uses the node's), and forwarding to the node's loopback would reach the node's services rather than the pod: %w",
			port, sb.ID, errdefs.ErrNotImplemented)
	}
	if sb.State != SandboxReady || sb.NetworkDetached {
		return fmt.Errorf("port-forward to port %d of pod sandbox %s: the pod is stopped: %w", port, sb.ID, errdefs.ErrFailedPrecondition)
	}
	var conn net.Conn
	err = netns.Do(sb.NetNS, func() error {
		// The socket is made here, so it belongs to the pod's namespace
		// for its life, whichever thread uses it after.
		d := net.Dialer{Timeout: portForwardDialTimeout}
		var err error
		conn, err = d.DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
		return err
	})
	if err != nil {
		return fmt.Errorf("port-forward to port %d of pod sandbox %s: %w", port, sb.ID, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(conn, stream)
		// The client is done sending: the pod sees the end of its input
		// and may still answer.
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	_, err = io.Copy(stream, conn)
	// The pod's side ended: close the stream so that the copy in goes too.
	stream.Close()
	wg.Wait()
	return err
}
