package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/wasm"
)

// ExecOptions describe one command run in a container.
type ExecOptions struct {
	Cmd []string
	// Stdin, when set, feeds the command's standard input.
	Stdin io.Reader
	// Stdout and Stderr receive its output and are closed at its end; nil
	// discards. With a TTY there is one stream: stderr goes to stdout.
	Stdout, Stderr io.WriteCloser
	TTY            bool
}

var execSeq atomic.Uint64

// Exec runs cmd as a new instance of the container's module, in the
// container's sandbox: its root and mounts, env, working directory and
// limits, with cmd as argv. It returns the command's exit code; ctx ending
// stops the command and returns ctx's error. The command ends with the
// container, as a process in a container's PID namespace does.
func (m *Manager) Exec(ctx context.Context, id string, opts ExecOptions) (int32, error) {
	if err := validateCommand("command", opts.Cmd); err != nil {
		return 0, err
	}
	c, err := m.containers.get(id)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	r := c.run
	if c.State != ContainerRunning || r.running() == nil || r.ending {
		c.mu.Unlock()
		return 0, fmt.Errorf("container %s is %s; exec needs it running: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	// Counted before it starts: the container's directories (which the
	// spec names by descriptor) stay open until this exec is done.
	r.execing.Add(1)
	defer r.execing.Done()
	n := execSeq.Add(1)
	spec := wasm.Spec{
		ID:         c.ID + "-exec-" + strconv.FormatUint(n, 10),
		Args:       opts.Cmd,
		Env:        c.Env,
		WorkingDir: c.WorkingDir,
		Dirs:       r.live.pre.dirs,
		Stdin:      opts.Stdin,
		Stdout:     opts.Stdout,
		Stderr:     opts.Stderr,
		Limits:     c.Resources.limits(),
	}
	imageID, moduleDigest := c.ImageID, c.ModuleDigest
	c.mu.Unlock()

	if opts.TTY && opts.Stdout != nil {
		w := &syncWriter{w: opts.Stdout}
		spec.Stdout, spec.Stderr = w, nopCloser{w}
	}
	compiled, err := m.compiledFor(ctx, imageID, moduleDigest)
	if err != nil {
		closeAll(opts.Stdout, opts.Stderr)
		return 0, err
	}
	inst, err := m.runtime.Start(compiled, spec)
	if err != nil {
		closeAll(opts.Stdout, opts.Stderr)
		return 0, fmt.Errorf("exec in container %s: %w: %w", id, err, errdefs.ErrFailedPrecondition)
	}
	c.mu.Lock()
	if r.ending {
		inst.Stop()
	} else {
		r.execs[inst] = struct{}{}
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(r.execs, inst)
		c.mu.Unlock()
	}()
	select {
	case <-inst.Done():
	case <-ctx.Done():
		inst.Stop()
		<-inst.Done()
		return 0, ctx.Err()
	}
	// Ended with its container: 137, as a process killed by SIGKILL.
	return inst.Result().ExitCode, nil
}

// ExecSync runs cmd and returns its exit code and output, each stream cut
// at limit bytes. A timeout of 0 waits for ever; past it the command is
// stopped and context.DeadlineExceeded returned, as kubelet's exec probes
// expect.
func (m *Manager) ExecSync(ctx context.Context, id string, cmd []string, timeoutSeconds int64, limit int) (int32, []byte, []byte, error) {
	if timeoutSeconds > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, secondsToDuration(timeoutSeconds))
		defer cancel()
	}
	stdout, stderr := &limitedBuffer{limit: limit}, &limitedBuffer{limit: limit}
	code, err := m.Exec(ctx, id, ExecOptions{Cmd: cmd, Stdout: stdout, Stderr: stderr})
	if errors.Is(err, context.DeadlineExceeded) {
		return 0, nil, nil, fmt.Errorf("command %q timed out after %ds: %w", cmd, timeoutSeconds, err)
	}
	if err != nil {
		return 0, nil, nil, err
	}
	return code, stdout.Bytes(), stderr.Bytes(), nil
}

// limitedBuffer keeps the first limit bytes written and drops the rest,
// so a chatty probe cannot grow the daemon without bound.
type limitedBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) Close() error { return nil }

func (b *limitedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf.Bytes()...)
}

// syncWriter lets two streams share one writer.
type syncWriter struct {
	mu sync.Mutex
	w  io.WriteCloser
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) Close() error { return s.w.Close() }

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// closeAll closes each writer once, even when two streams share one.
func closeAll(ws ...io.WriteCloser) {
	for i, w := range ws {
		if w != nil && !slices.Contains(ws[:i], w) {
			w.Close()
		}
	}
}
