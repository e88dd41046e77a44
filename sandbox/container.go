package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/wasm"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CreateContainer resolves the image, compiles its module (once per
// module, cached), and records a created container in the sandbox.
func (m *Manager) CreateContainer(ctx context.Context, sandboxID string, cfg *runtimeapi.ContainerConfig) (Container, error) {
	if cfg.GetMetadata().GetName() == "" {
		return Container{}, fmt.Errorf("container config has no metadata name: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.GetImage().GetImage() == "" {
		return Container{}, fmt.Errorf("container config names no image: %w", errdefs.ErrInvalidArgument)
	}
	cfg, err := m.resolveImageMounts(ctx, cfg)
	if err != nil {
		return Container{}, err
	}
	if err := checkMounts(cfg.GetMounts()); err != nil {
		return Container{}, err
	}
	if sc := cfg.GetLinux().GetSecurityContext(); sc.GetRunAsGroup() != nil && sc.GetRunAsUser() == nil && sc.GetRunAsUsername() == "" {
		return Container{}, fmt.Errorf("run_as_group is set without run_as_user or run_as_username: %w", errdefs.ErrInvalidArgument)
	}
	resources := resourcesFrom(cfg.GetLinux().GetResources())
	if err := checkResources(resources); err != nil {
		return Container{}, err
	}
	m.mu.Lock()
	sb, err := m.sandboxLocked(sandboxID)
	if err != nil {
		m.mu.Unlock()
		return Container{}, err
	}
	if sb.State != SandboxReady {
		m.mu.Unlock()
		return Container{}, fmt.Errorf("sandbox %s is not ready: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	sandbox := *sb
	m.mu.Unlock()

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
	if err := m.populateRoot(ctx, img, m.rootfs(c.ID)); err != nil {
		os.RemoveAll(m.rootfs(c.ID))
		return Container{}, err
	}
	if err := prepareRoot(m.rootfs(c.ID), c.WorkingDir, sandbox.Config); err != nil {
		os.RemoveAll(m.rootfs(c.ID))
		return Container{}, err
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if sb, ok := m.sandboxes[sandbox.ID]; !ok || sb.State != SandboxReady {
		os.RemoveAll(m.rootfs(c.ID))
		return Container{}, fmt.Errorf("sandbox %s was stopped while the container was created: %w", sandbox.ID, errdefs.ErrFailedPrecondition)
	}
	if other, taken := m.names[c.Name()]; taken {
		os.RemoveAll(m.rootfs(c.ID))
		return Container{}, fmt.Errorf("container name %q is taken by container %s: %w", cfg.GetMetadata().GetName(), other, errdefs.ErrAlreadyExists)
	}
	if err := m.store.putContainer(c); err != nil {
		os.RemoveAll(m.rootfs(c.ID))
		return Container{}, fmt.Errorf("persist container: %w", err)
	}
	m.containers[c.ID] = c
	m.names[c.Name()] = c.ID
	m.emitLocked(ContainerCreatedEvent, c)
	m.log.Info("container created", "container", c.ID, "sandbox", c.SandboxID, "image", c.ImageRef, "args", c.Args)
	return c.snapshot(), nil
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
func (m *Manager) StartContainer(ctx context.Context, id string) error {
	m.mu.Lock()
	c, err := m.containerLocked(id)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	if c.State != ContainerCreated {
		m.mu.Unlock()
		return fmt.Errorf("container %s is %s, not created: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	if sb := m.sandboxes[c.SandboxID]; sb == nil || sb.State != SandboxReady {
		m.mu.Unlock()
		return fmt.Errorf("sandbox %s of container %s is not ready: %w", c.SandboxID, c.ID, errdefs.ErrFailedPrecondition)
	}
	// Mark it running now so a concurrent start cannot run it twice.
	c.State = ContainerRunning
	cfg, snapshot := c.Config, c.snapshot()
	m.mu.Unlock()

	// The start time is taken before the instance runs: a short module can
	// have finished by the time Start returns.
	now := time.Now()
	r, err := m.startRun(ctx, &snapshot, cfg.GetStdin(), cfg.GetStdinOnce())

	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		c.State, c.StartedAt, c.FinishedAt = ContainerExited, now, now
		c.ExitCode, c.Reason, c.Message = 128, ReasonStartError, err.Error()
		if perr := m.store.putContainer(c); perr != nil {
			m.log.Error("persist container", "container", c.ID, "error", perr)
		}
		m.emitLocked(ContainerStoppedEvent, c)
		m.log.Warn("container failed to start", "container", c.ID, "error", err)
		return fmt.Errorf("start container %s: %w: %w", c.ID, err, errdefs.ErrFailedPrecondition)
	}
	c.StartedAt, c.run = now, r
	if err := m.store.putContainer(c); err != nil {
		m.log.Error("persist container", "container", c.ID, "error", err)
	}
	m.emitLocked(ContainerStartedEvent, c)
	go m.watch(c, r)
	m.log.Info("container started", "container", c.ID)
	return nil
}

// startRun places the container's mounts, opens its log and streams, and
// starts its instance.
func (m *Manager) startRun(ctx context.Context, c *Container, stdin, stdinOnce bool) (*run, error) {
	compiled, err := m.compiledFor(ctx, c.ImageID, c.ModuleDigest)
	if err != nil {
		return nil, err
	}
	sc := c.Config.GetLinux().GetSecurityContext()
	dirs, files, err := placeMounts(m.rootfs(c.ID), sc.GetReadonlyRootfs(), c.Config.GetMounts())
	if err != nil {
		return nil, err
	}
	if dirs, err = restrictPaths(dirs, m.emptyDir(), sc.GetMaskedPaths(), sc.GetReadonlyPaths()); err != nil {
		return nil, err
	}
	r := &run{recorded: make(chan struct{}), dirs: dirs, files: files, stdout: newOutputHub(), stderr: newOutputHub()}
	stdout, stderr := tee{hub: r.stdout}, tee{hub: r.stderr}
	if c.LogPath != "" {
		if r.log, err = wasm.OpenCRILog(c.LogPath); err != nil {
			return nil, fmt.Errorf("open log: %w", err)
		}
		stdout.log, stderr.log = r.log.Stream("stdout"), r.log.Stream("stderr")
	}
	spec := wasm.Spec{
		ID:         c.ID,
		Args:       c.Args,
		Env:        c.Env,
		WorkingDir: c.WorkingDir,
		Dirs:       dirs,
		Stdout:     stdout,
		Stderr:     stderr,
		Limits:     c.Resources.limits(),
	}
	if stdin {
		r.stdin = newStdinHub(stdinOnce)
		spec.Stdin = r.stdin.r
	}
	if r.instance, err = m.runtime.Start(compiled, spec); err != nil {
		stdout.Close()
		stderr.Close()
		return nil, err
	}
	return r, nil
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

// watch records how the instance ended.
func (m *Manager) watch(c *Container, r *run) {
	res := r.instance.Result()
	cpu := r.instance.Stats().CPU
	if r.stdin != nil {
		r.stdin.close()
	}
	copyErr := copyBack(r.files)
	m.mu.Lock()
	defer m.mu.Unlock()
	defer close(r.recorded)
	c.run = nil
	c.State = ContainerExited
	c.FinishedAt = res.FinishedAt
	c.ExitCode = res.ExitCode
	c.CPU = cpu
	switch {
	case res.OOM:
		c.Reason, c.Message = ReasonOOMKilled, fmt.Sprintf("memory limit of %d bytes reached: %s", c.Resources.MemoryLimitBytes, res.Trap)
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
		if err := m.store.putContainer(c); err != nil {
			m.log.Error("persist container", "container", c.ID, "error", err)
		}
		m.emitLocked(ContainerStoppedEvent, c)
	}
	m.log.Info("container exited", "container", c.ID, "exit_code", c.ExitCode, "reason", c.Reason, "message", c.Message)
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
	m.mu.Unlock()
	if r == nil {
		return nil
	}
	r.instance.Stop()
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
	m.mu.Unlock()
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.StopContainer(c.ID, 0); err != nil {
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

// inRoot joins a guest path onto a host root; cleaning it as an absolute
// path first drops any ".." that would climb out.
func inRoot(root, guest string) string {
	return filepath.Join(root, filepath.Clean("/"+guest))
}
