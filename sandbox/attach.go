package sandbox

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"

	"github.com/containerd/errdefs"
)

// Attach connects to a running container: its output from now on goes to
// stdout and stderr (one stream with a TTY), and stdin, when given and the
// container was created with stdin, feeds its input. It returns when the
// container's output ends or ctx is done.
func (m *Manager) Attach(ctx context.Context, id string, stdin io.Reader, stdout, stderr io.WriteCloser, tty bool) error {
	m.mu.Lock()
	c, err := m.containerLocked(id)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	r := c.run
	m.mu.Unlock()
	if r == nil {
		return fmt.Errorf("container %s is %s; attach needs it running: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	if stdin != nil && r.stdin == nil {
		return fmt.Errorf("container %s was not created with stdin: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	if tty && stderr == nil {
		stderr = stdout
	}

	var done []<-chan struct{}
	var detach []func()
	var mu sync.Mutex // the two streams may share one writer under a TTY
	for _, s := range []struct {
		hub *outputHub
		w   io.WriteCloser
	}{{r.stdout, stdout}, {r.stderr, stderr}} {
		if s.w == nil {
			continue
		}
		w := s.w
		d, ch := s.hub.attach(writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return w.Write(p)
		}))
		detach, done = append(detach, d), append(done, ch)
	}
	if stdin != nil {
		go r.stdin.feed(stdin)
	}
	// With no output attached, only the container's end or the client's
	// leaving ends the session.
	var ended chan struct{}
	if len(done) > 0 {
		ended = make(chan struct{})
		go func() {
			for _, ch := range done {
				<-ch
			}
			close(ended)
		}()
	}
	select {
	case <-ended:
	case <-r.recorded:
	case <-ctx.Done():
	}
	for _, d := range detach {
		d()
	}
	for _, ch := range done {
		<-ch
	}
	closeAll(stdout, stderr)
	return nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// PortForward connects stream to port of the pod. A Wasm pod has no network
// namespace of its own: its ports are the node's loopback ports, so only
// ports the pod declares in its port mappings are reachable this way.
func (m *Manager) PortForward(ctx context.Context, sandboxID string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	m.mu.Lock()
	sb, err := m.sandboxLocked(sandboxID)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	var declared []int32
	for _, pm := range sb.Config.GetPortMappings() {
		declared = append(declared, pm.GetContainerPort())
	}
	m.mu.Unlock()
	if !slices.Contains(declared, port) {
		return fmt.Errorf("port %d is not a port of pod sandbox %s (declared: %v): %w", port, sb.ID, declared, errdefs.ErrInvalidArgument)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("port-forward to port %d of sandbox %s: %w", port, sb.ID, err)
	}
	defer conn.Close()
	copied := make(chan struct{}, 2)
	go func() { io.Copy(conn, stream); conn.(*net.TCPConn).CloseWrite(); copied <- struct{}{} }()
	go func() { io.Copy(stream, conn); copied <- struct{}{} }()
	select {
	case <-copied:
	case <-ctx.Done():
	}
	return nil
}
