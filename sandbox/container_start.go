package sandbox

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/internal/crilog"
	"github.com/wasmcri/wasmcri/internal/inroot"
	"github.com/wasmcri/wasmcri/wasm"
)

// StartContainer runs the container's module. A module that cannot be
// instantiated leaves the container exited with reason StartError, as a
// process that fails to exec does.
//
// The start first claims the container by giving it a run, before
// anything of the run exists, so a Stop or Remove arriving while it starts
// finds it: the stop is applied the moment the instance exists, and
// Remove waits for its end. While it starts the container still shows as
// created, as containerd's do.
func (m *Manager) StartContainer(ctx context.Context, id string) error {
	c, r, snapshot, err := m.claimStart(id)
	if err != nil {
		return err
	}
	// The start time is taken before the instance runs: a short module can
	// have finished by the time Start returns.
	now := time.Now()
	live, err := m.startRun(ctx, &snapshot)

	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.run = nil
		m.updateContainerLocked(c, fact, ContainerStoppedEvent, func(s *ContainerStatus) error {
			s.State, s.StartedAt, s.FinishedAt = ContainerExited, now, now
			s.ExitCode, s.Reason, s.Message = 128, ReasonStartError, err.Error()
			return nil
		})
		close(r.recorded)
		m.log.Warn("container failed to start", "container", c.ID, "error", err)
		return fmt.Errorf("start container %s: %w: %w", c.ID, err, errdefs.ErrFailedPrecondition)
	}
	r.live = live
	if r.stopAsked {
		live.instance.Stop()
	} else if c.Resources != snapshot.Resources {
		// Updated while it started: the instance got the old limits.
		if err := live.instance.SetLimits(c.Resources.limits()); err != nil {
			m.log.Warn("CPU limit not applied", "container", c.ID, "error", err)
		}
	}
	m.updateContainerLocked(c, fact, ContainerStartedEvent, func(s *ContainerStatus) error {
		s.State, s.StartedAt = ContainerRunning, now
		return nil
	})
	// The exit is recorded after the start: watch waits for c.mu.
	go m.watch(c, r)
	m.log.Info("container started", "container", c.ID)
	return nil
}

// claimStart gives a created container of a ready sandbox its run, so
// that no second start runs it, and returns a copy to start from.
func (m *Manager) claimStart(id string) (*containerEntry, *run, Container, error) {
	c, err := m.containers.get(id)
	if err != nil {
		return nil, nil, Container{}, err
	}
	sb, err := m.sandboxes.get(c.SandboxID)
	if err != nil {
		return nil, nil, Container{}, fmt.Errorf("sandbox %s of container %s is gone: %w", c.SandboxID, c.ID, errdefs.ErrFailedPrecondition)
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.State != ContainerCreated || c.removing:
		return nil, nil, Container{}, fmt.Errorf("container %s is %s, not created: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	case c.run != nil:
		return nil, nil, Container{}, fmt.Errorf("container %s is already starting: %w", c.ID, errdefs.ErrFailedPrecondition)
	case sb.State != SandboxReady:
		return nil, nil, Container{}, fmt.Errorf("sandbox %s of container %s is not ready: %w", c.SandboxID, c.ID, errdefs.ErrFailedPrecondition)
	}
	c.run = newRun()
	return c, c.run, c.Container, nil
}

// startRun places the container's mounts, opens its log and streams, and
// starts its instance.
func (m *Manager) startRun(ctx context.Context, c *Container) (_ *live, err error) {
	compiled, err := m.compiledFor(ctx, c.ImageID, c.ModuleDigest)
	if err != nil {
		return nil, err
	}
	root, err := inroot.Open(m.rootfs(c.ID))
	if err != nil {
		return nil, fmt.Errorf("container root: %w", err)
	}
	defer root.Close()
	sc := c.Config.GetLinux().GetSecurityContext()
	pre, files, err := placeMounts(root, sc.GetReadonlyRootfs(), c.Config.GetMounts())
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			pre.close()
		}
	}()
	if err := restrictPaths(pre, root, m.emptyDir(), sc.GetMaskedPaths(), sc.GetReadonlyPaths()); err != nil {
		return nil, err
	}
	var listeners []wasm.Listener
	if len(c.Ports) > 0 {
		sb, err := m.Sandbox(c.SandboxID)
		if err != nil {
			return nil, err
		}
		// Start owns the sockets from then on, whether it succeeds or not.
		if listeners, err = openListeners(sb.NetNS, c.Ports); err != nil {
			return nil, err
		}
	}
	l := &live{pre: pre, files: files, stdout: newOutputHub(), stderr: newOutputHub()}
	stdout, stderr := tee{hub: l.stdout}, tee{hub: l.stderr}
	if c.LogPath != "" {
		if l.log, err = crilog.Open(c.LogPath); err != nil {
			closeListeners(listeners)
			return nil, fmt.Errorf("open log: %w", err)
		}
		stdout.log, stderr.log = l.log.Stream("stdout"), l.log.Stream("stderr")
	}
	spec := wasm.Spec{
		ID:         c.ID,
		Args:       c.Args,
		Env:        c.Env,
		WorkingDir: c.WorkingDir,
		Dirs:       pre.dirs,
		Stdout:     stdout,
		Stderr:     stderr,
		Limits:     c.Resources.limits(),
		Listeners:  listeners,
	}
	if c.Config.GetStdin() {
		l.stdin = newStdinHub(c.Config.GetStdinOnce())
		spec.Stdin = l.stdin.r
	}
	if l.instance, err = m.runtime.Start(compiled, spec); err != nil {
		stdout.Close()
		stderr.Close()
		l.stdin.close()
		return nil, err
	}
	return l, nil
}
