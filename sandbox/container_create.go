package sandbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/image"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CreateContainer checks the request, makes the container's root and
// records a created container in the sandbox. Its module is compiled
// (once per module, cached) before anything is made.
func (m *Manager) CreateContainer(ctx context.Context, sandboxID string, cfg *runtimeapi.ContainerConfig) (_ Container, err error) {
	p, err := m.checkCreate(ctx, sandboxID, cfg)
	if err != nil {
		return Container{}, err
	}
	c := newContainer(p)
	// From here on a failure leaves nothing behind.
	defer func() {
		if err != nil {
			m.releaseRoot(c)
		}
	}()
	if err := m.makeRoot(ctx, c, p.img, p.sandbox); err != nil {
		return Container{}, err
	}
	if err := m.commitContainer(c); err != nil {
		return Container{}, err
	}
	m.log.Info("container created", "container", c.ID, "sandbox", c.SandboxID, "image", c.ImageRef, "args", c.Args)
	return c.Container, nil
}

// createPlan is a checked CreateContainer request.
type createPlan struct {
	sandbox   Sandbox
	img       *image.Image
	cfg       *runtimeapi.ContainerConfig
	resources Resources
	// volumeHolds are the images whose files the image volumes hold.
	volumeHolds []string
	ports       []Port
}

// checkCreate refuses a request that cannot make a container (bad config,
// sandbox not ready, image absent, module that does not compile) before
// anything is made for it.
func (m *Manager) checkCreate(ctx context.Context, sandboxID string, cfg *runtimeapi.ContainerConfig) (_ createPlan, err error) {
	if err := validateContainerConfig(cfg); err != nil {
		return createPlan{}, err
	}
	cfg, held, err := m.resolveImageMounts(ctx, cfg)
	if err != nil {
		return createPlan{}, err
	}
	// The holds pass to the container, or end here.
	defer func() {
		if err != nil {
			m.releaseVolumes(held)
		}
	}()
	if err := checkMounts(cfg.GetMounts()); err != nil {
		return createPlan{}, err
	}
	p := createPlan{cfg: cfg, resources: resourcesFrom(cfg.GetLinux().GetResources()), volumeHolds: held}
	if err := checkResources(p.resources); err != nil {
		return createPlan{}, err
	}
	if p.sandbox, err = m.readySandbox(sandboxID); err != nil {
		return createPlan{}, err
	}
	first := func() bool { return len(m.containersOf(sandboxID)) == 0 }
	if p.ports, err = containerPorts(cfg, p.sandbox.Config, first); err != nil {
		return createPlan{}, err
	}
	if p.img, err = m.images.Get(cfg.GetImage().GetImage()); err != nil {
		if errdefs.IsNotFound(err) {
			return createPlan{}, fmt.Errorf("image %q is not present on this node (pull it first): %w", cfg.GetImage().GetImage(), errdefs.ErrNotFound)
		}
		return createPlan{}, err
	}
	if _, err := m.prepare(ctx, p.img); err != nil {
		return createPlan{}, err
	}
	return p, nil
}

// readySandbox returns a copy of the sandbox, which must be ready.
func (m *Manager) readySandbox(id string) (Sandbox, error) {
	sb, err := m.sandboxes.get(id)
	if err != nil {
		return Sandbox{}, err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.State != SandboxReady {
		return Sandbox{}, fmt.Errorf("sandbox %s is not ready: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	return sb.Sandbox, nil
}

// newContainer is the record of a container about to be created.
func newContainer(p createPlan) *containerEntry {
	img, cfg := p.img, p.cfg
	c := &containerEntry{Container: Container{
		ID:             newID(),
		SandboxID:      p.sandbox.ID,
		Config:         cfg,
		ImageRef:       cfg.GetImage().GetImage(),
		ImageName:      cfg.GetImage().GetImage(),
		ImageID:        img.ID,
		ImageDigestRef: digestRef(img),
		ModuleDigest:   img.Module.Digest.String(),
		Args:           commandLine(img, cfg),
		Env:            environment(img, cfg),
		WorkingDir:     cfg.GetWorkingDir(),
		Ports:          p.ports,
		CreatedAt:      time.Now(),
		ContainerStatus: ContainerStatus{
			State:     ContainerCreated,
			Resources: p.resources,
		},
	}}
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
		c.LogPath = filepath.Join(p.sandbox.LogDirectory, lp)
	}
	if !hasEnv(c.Env, "HOSTNAME") {
		c.Env = append(c.Env, "HOSTNAME="+hostname(p.sandbox.Config))
	}
	c.volumeHolds = p.volumeHolds
	return c
}

// commitContainer records the container, if its sandbox is still ready:
// a stop of the sandbox may have come while the root was made.
func (m *Manager) commitContainer(c *containerEntry) error {
	sb, err := m.sandboxes.get(c.SandboxID)
	if err != nil {
		return fmt.Errorf("sandbox %s was removed while the container was created: %w", c.SandboxID, errdefs.ErrFailedPrecondition)
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.State != SandboxReady || sb.removed {
		return fmt.Errorf("sandbox %s was stopped while the container was created: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	return m.addContainerLocked(c)
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
