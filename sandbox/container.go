package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/internal/crilog"
	"github.com/wasmcri/wasmcri/internal/inroot"
	"github.com/wasmcri/wasmcri/wasm"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CreateContainer resolves the image, compiles its module (once per
// module, cached), makes the container's root and records a created
// container in the sandbox.
func (m *Manager) CreateContainer(ctx context.Context, sandboxID string, cfg *runtimeapi.ContainerConfig) (_ Container, err error) {
	if err := validateContainerConfig(cfg); err != nil {
		return Container{}, err
	}
	cfg, err = m.resolveImageMounts(ctx, cfg)
	if err != nil {
		return Container{}, err
	}
	if err := checkMounts(cfg.GetMounts()); err != nil {
		return Container{}, err
	}
	resources := resourcesFrom(cfg.GetLinux().GetResources())
	if err := checkResources(resources); err != nil {
		return Container{}, err
	}
	sandbox, err := m.readySandbox(sandboxID)
	if err != nil {
		return Container{}, err
	}
	img, err := m.images.Get(cfg.GetImage().GetImage())
	if err != nil {
		if errdefs.IsNotFound(err) {
			return Container{}, fmt.Errorf("image %q is not present on this node (pull it first): %w", cfg.GetImage().GetImage(), errdefs.ErrNotFound)
		}
		return Container{}, err
	}
	if _, err := m.prepare(ctx, img); err != nil {
		return Container{}, err
	}

	c := newContainer(sandbox, img, cfg, resources)
	// From here on a failure leaves nothing behind.
	defer func() {
		if err != nil {
			if rerr := os.RemoveAll(m.rootfs(c.ID)); rerr != nil {
				m.log.Warn("container root not removed", "container", c.ID, "error", rerr)
			}
		}
	}()
	if err := m.makeRoot(ctx, c, img, sandbox.Config); err != nil {
		return Container{}, err
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if sb, ok := m.sandboxes[sandbox.ID]; !ok || sb.State != SandboxReady {
		return Container{}, fmt.Errorf("sandbox %s was stopped while the container was created: %w", sandbox.ID, errdefs.ErrFailedPrecondition)
	}
	if other, taken := m.names[c.Name()]; taken {
		return Container{}, fmt.Errorf("container name %q is taken by container %s: %w", cfg.GetMetadata().GetName(), other, errdefs.ErrAlreadyExists)
	}
	if err := m.store.putContainer(c); err != nil {
		return Container{}, fmt.Errorf("persist container: %w", err)
	}
	m.containers[c.ID] = c
	m.names[c.Name()] = c.ID
	m.emitLocked(ContainerCreatedEvent, c)
	m.log.Info("container created", "container", c.ID, "sandbox", c.SandboxID, "image", c.ImageRef, "args", c.Args)
	return c.snapshot(), nil
}

// readySandbox returns a copy of the sandbox, which must be ready.
func (m *Manager) readySandbox(id string) (Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb, err := m.sandboxLocked(id)
	if err != nil {
		return Sandbox{}, err
	}
	if sb.State != SandboxReady {
		return Sandbox{}, fmt.Errorf("sandbox %s is not ready: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	return *sb, nil
}

// newContainer is the record of a container about to be created.
func newContainer(sandbox Sandbox, img *image.Image, cfg *runtimeapi.ContainerConfig, resources Resources) *Container {
	c := &Container{
		ID:             newID(),
		SandboxID:      sandbox.ID,
		Config:         cfg,
		ImageRef:       cfg.GetImage().GetImage(),
		ImageName:      cfg.GetImage().GetImage(),
		ImageID:        img.ID,
		ImageDigestRef: digestRef(img),
		ModuleDigest:   img.Module.Digest.String(),
		Args:           commandLine(img, cfg),
		Env:            environment(img, cfg),
		WorkingDir:     cfg.GetWorkingDir(),
		State:          ContainerCreated,
		CreatedAt:      time.Now(),
		Resources:      resources,
	}
	if len(img.RepoTags) > 0 {
		c.ImageName = img.RepoTags[0]
	}
	if c.WorkingDir == "" {
		c.WorkingDir = img.WorkingDir
	}
	if c.WorkingDir == "" {
		c.WorkingDir = "/"
	}
	if lp := cfg.GetLogPath(); lp != "" {
		c.LogPath = filepath.Join(sandbox.LogDirectory, lp)
	}
	if !hasEnv(c.Env, "HOSTNAME") {
		c.Env = append(c.Env, "HOSTNAME="+hostname(sandbox.Config))
	}
	return c
}

// makeRoot makes the container's writable root: the image's files, then
// the files every container gets.
func (m *Manager) makeRoot(ctx context.Context, c *Container, img *image.Image, sb *runtimeapi.PodSandboxConfig) error {
	if err := os.MkdirAll(m.rootfs(c.ID), 0o755); err != nil {
		return fmt.Errorf("create container root: %w", err)
	}
	root, err := inroot.Open(m.rootfs(c.ID))
	if err != nil {
		return err
	}
	defer root.Close()
	if err := m.populateRoot(ctx, img, root); err != nil {
		return rootError(img, err)
	}
	return rootError(img, prepareRoot(root, c.WorkingDir, sb))
}

// rootError tells a failure the image caused from the daemon's own: a
// path the daemon must create that the image's files block (a symlink
// leading nowhere inside the root, a loop, a directory where a file goes)
// is refused as the image's fault, naming the path.
func rootError(img *image.Image, err error) error {
	for _, errno := range []syscall.Errno{syscall.ENOTDIR, syscall.ELOOP, syscall.EISDIR} {
		if errors.Is(err, errno) {
			return fmt.Errorf("image %s cannot make a container root (its symlinks are resolved inside the root, never out of it): %w: %w", img.ID, err, errdefs.ErrInvalidArgument)
		}
	}
	return err
}

// digestRef is the image's repo digest, else its ID.
func digestRef(img *image.Image) string {
	if len(img.RepoDigests) > 0 {
		return img.RepoDigests[0]
	}
	return img.ID
}

// prepare makes sure the image's module is compiled in the cache.
func (m *Manager) prepare(ctx context.Context, img *image.Image) (wasm.Compiled, error) {
	c, err := m.runtime.Prepare(ctx, img.Module.Digest, func() ([]byte, error) { return m.images.ReadModule(ctx, img) })
	if errors.Is(err, wasm.ErrInvalidModule) {
		return c, fmt.Errorf("image %s: %w: %w", img.ID, err, errdefs.ErrInvalidArgument)
	}
	return c, err
}

// StartContainer runs the container's module. A module that cannot be
// instantiated leaves the container exited with reason StartError, as a
// process that fails to exec does.
//
// The container's run is registered before anything of it exists, so a
// Stop or Remove arriving while it starts finds it: the stop is applied
// the moment the instance exists, and Remove waits for its end.
func (m *Manager) StartContainer(ctx context.Context, id string) error {
	m.mu.Lock()
	c, err := m.containerLocked(id)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	if c.State != ContainerCreated || c.removing {
		m.mu.Unlock()
		return fmt.Errorf("container %s is %s, not created: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	if sb := m.sandboxes[c.SandboxID]; sb == nil || sb.State != SandboxReady {
		m.mu.Unlock()
		return fmt.Errorf("sandbox %s of container %s is not ready: %w", c.SandboxID, c.ID, errdefs.ErrFailedPrecondition)
	}
	// Running now, so a concurrent start cannot run it twice.
	r := &run{recorded: make(chan struct{}), execs: map[*wasm.Instance]struct{}{}}
	c.State, c.run = ContainerRunning, r
	snapshot := c.snapshot()
	m.mu.Unlock()

	// The start time is taken before the instance runs: a short module can
	// have finished by the time Start returns.
	now := time.Now()
	live, err := m.startRun(ctx, &snapshot)

	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		c.run = nil
		c.State, c.StartedAt, c.FinishedAt = ContainerExited, now, now
		c.ExitCode, c.Reason, c.Message = 128, ReasonStartError, err.Error()
		m.persistLocked(c)
		m.emitLocked(ContainerStoppedEvent, c)
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
	c.StartedAt = now
	m.persistLocked(c)
	m.emitLocked(ContainerStartedEvent, c)
	go m.watch(c, r)
	m.log.Info("container started", "container", c.ID)
	return nil
}

// persistLocked writes the container's record, if it still has one.
func (m *Manager) persistLocked(c *Container) {
	if _, ok := m.containers[c.ID]; !ok {
		return
	}
	if err := m.store.putContainer(c); err != nil {
		m.log.Error("persist container", "container", c.ID, "error", err)
	}
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
	l := &live{pre: pre, files: files, stdout: newOutputHub(), stderr: newOutputHub()}
	stdout, stderr := tee{hub: l.stdout}, tee{hub: l.stderr}
	if c.LogPath != "" {
		if l.log, err = crilog.Open(c.LogPath); err != nil {
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

// compiledFor returns the compiled module of the image a container was
// created from, refusing an image that now holds another module.
func (m *Manager) compiledFor(ctx context.Context, imageID, moduleDigest string) (wasm.Compiled, error) {
	img, err := m.images.Get(imageID)
	if err != nil {
		return wasm.Compiled{}, fmt.Errorf("image %s is gone: %w", imageID, err)
	}
	if img.Module.Digest != digest.Digest(moduleDigest) {
		return wasm.Compiled{}, fmt.Errorf("image %s now holds module %s, not %s", imageID, img.Module.Digest, moduleDigest)
	}
	return m.prepare(ctx, img)
}

// watch records how the instance ended. Exec instances end with it, as
// the processes of a container end with its init; its preopened
// directories are released once nothing uses them.
func (m *Manager) watch(c *Container, r *run) {
	l := r.live
	res := l.instance.Result()
	cpu := l.instance.Stats().CPU
	l.stdin.close()
	m.mu.Lock()
	r.ending = true
	execs := make([]*wasm.Instance, 0, len(r.execs))
	for e := range r.execs {
		execs = append(execs, e)
	}
	m.mu.Unlock()
	for _, e := range execs {
		e.Stop()
	}
	r.execing.Wait()
	var copyErr error
	if len(l.files) > 0 {
		if root, err := inroot.Open(m.rootfs(c.ID)); err != nil {
			copyErr = err
		} else {
			copyErr = copyBack(root, l.files)
			root.Close()
		}
	}
	l.pre.close()

	m.mu.Lock()
	defer m.mu.Unlock()
	defer close(r.recorded)
	c.run = nil
	c.State = ContainerExited
	c.FinishedAt = res.FinishedAt
	c.ExitCode = res.ExitCode
	c.CPU = cpu
	switch {
	case res.OOM && c.Resources.MemoryLimitBytes > 0:
		c.Reason, c.Message = ReasonOOMKilled, fmt.Sprintf("memory limit of %d bytes reached: %s", c.Resources.MemoryLimitBytes, res.Trap)
	case res.OOM:
		c.Reason, c.Message = ReasonOOMKilled, "the node's default memory limit (runtime.default_memory_limit) reached: "+res.Trap
	case res.StartError != "":
		// The module's instantiation failed after Start had returned.
		c.Reason, c.Message = ReasonStartError, res.StartError
	case res.Stopped && m.shuttingDown:
		c.Reason, c.Message = ReasonDaemonRestarted, "wasmcri was shut down while the container was running"
	case res.Stopped:
		c.Reason, c.Message = ReasonError, "stopped by the runtime"
	case res.Trap != "":
		c.Reason, c.Message = ReasonError, "wasm trap: "+res.Trap
	case res.ExitCode == 0:
		c.Reason, c.Message = ReasonCompleted, ""
	default:
		c.Reason, c.Message = ReasonError, ""
	}
	if copyErr != nil {
		m.log.Warn("file mounts not copied back", "container", c.ID, "error", copyErr)
	}
	if _, live := m.containers[c.ID]; live {
		m.persistLocked(c)
		m.emitLocked(ContainerStoppedEvent, c)
	}
	m.log.Info("container exited", "container", c.ID, "exit_code", c.ExitCode, "reason", c.Reason, "message", c.Message)
}

// stopLocked interrupts a run: at once if its instance exists, else as
// soon as its start has made it.
func (r *run) stopLocked() {
	r.stopAsked = true
	if r.live != nil {
		r.live.instance.Stop()
	}
}

// StopContainer ends a running container. A Wasm module has no signal to
// catch, so there is no graceful phase: the instance is interrupted at
// once and timeout only bounds how long this call waits for it to end.
// Stopping a container that is not running, or is gone, is not an error.
func (m *Manager) StopContainer(id string, timeout time.Duration) error {
	m.mu.Lock()
	c, err := m.containerLocked(id)
	if errdefs.IsNotFound(err) {
		// CRI: idempotent; a container already removed is stopped.
		m.mu.Unlock()
		return nil
	}
	if err != nil {
		m.mu.Unlock()
		return err
	}
	r := c.run
	if r != nil {
		r.stopLocked()
	}
	m.mu.Unlock()
	if r == nil {
		return nil
	}
	wait := max(timeout, 10*time.Second)
	select {
	case <-r.recorded:
		return nil
	case <-time.After(wait):
		return fmt.Errorf("container %s did not end within %v of being interrupted: %w", id, wait, errdefs.ErrUnavailable)
	}
}

// RemoveContainer stops the container if needed and deletes it with its
// writable root. Its log file stays: kubelet owns and removes it.
// Removing an absent container is not an error (CRI: idempotent).
func (m *Manager) RemoveContainer(id string) error {
	m.mu.Lock()
	c, err := m.containerLocked(id)
	if err == nil {
		// No start begins from here on; one under way is stopped below.
		c.removing = true
	}
	m.mu.Unlock()
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.StopContainer(c.ID, 0); err != nil {
		m.mu.Lock()
		c.removing = false
		m.mu.Unlock()
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.containers[c.ID]; !ok {
		return nil
	}
	if err := m.store.delete(bucketContainers, c.ID); err != nil {
		return fmt.Errorf("delete container record: %w", err)
	}
	delete(m.containers, c.ID)
	delete(m.names, c.Name())
	m.usage.forget(c.ID)
	m.emitLocked(ContainerDeletedEvent, c)
	if err := os.RemoveAll(m.rootfs(c.ID)); err != nil {
		m.log.Warn("container directories not removed", "container", c.ID, "error", err)
	}
	m.log.Info("container removed", "container", c.ID)
	return nil
}
