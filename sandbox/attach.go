package sandbox

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/containerd/errdefs"
)

// Attach connects to a running container: its output from now on goes to
// stdout and stderr (one stream with a TTY), and stdin, when given and the
// container was created with stdin, feeds its input. It returns when the
// container's output ends or ctx is done.
func (m *Manager) Attach(ctx context.Context, id string, stdin io.Reader, stdout, stderr io.WriteCloser, tty bool) error {
	c, err := m.containers.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	var l *live
	var recorded chan struct{}
	if l = c.run.running(); l != nil {
		recorded = c.run.recorded
	}
	state := c.State
	c.mu.Unlock()
	if l == nil {
		return fmt.Errorf("container %s is %s; attach needs it running: %w", c.ID, state, errdefs.ErrFailedPrecondition)
	}
	if stdin != nil && l.stdin == nil {
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
	}{{l.stdout, stdout}, {l.stderr, stderr}} {
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
	// The session's end releases the stdin feed, even while the module
	// is not reading its input.
	session := make(chan struct{})
	defer close(session)
	if stdin != nil {
		go l.stdin.feed(stdin, session)
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
	case <-recorded:
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
