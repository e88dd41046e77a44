package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/internal/inroot"
	"golang.org/x/sys/unix"
)

// Container roots live in memory, one tmpfs per container, so that making
// one costs system calls and not disk writes (a file created on a node's
// disk costs up to half a millisecond; on tmpfs a few microseconds):
//
//	<roots>/              a tmpfs the manager mounts, holding only mount points
//	<roots>/<id>/         the container's writable layer: a tmpfs bounded in
//	                      bytes and inodes, so no module can fill the node's
//	                      memory or another container's layer
//	<roots>/<id>/root     what the module sees at "/": for a compat image an
//	                      overlay of upper/ over the image's unpacked files,
//	                      shared read-only by every container of the image;
//	                      for an artifact a plain directory
//	<roots>/<id>/upper, work   the overlay's writable half
//
// A writable layer lives as long as the daemon: instances run inside the
// daemon and end with it, so after a restart every started container has
// exited and nothing reads its root again. Start-up unmounts what a crash
// left and makes again the roots of containers created but not started.

// Defaults of Options.WritableLayerSize and WritableLayerInodes: room for
// what modules write at run time (caches, temporary files), not for data,
// which belongs in volumes.
const (
	DefaultWritableLayerSize   = 256 << 20
	DefaultWritableLayerInodes = 16384
)

// layerDir is container id's writable layer, a tmpfs of its own.
func (m *Manager) layerDir(id string) string { return filepath.Join(m.opts.RootsDir, id) }

// rootfs is the container's root: what the module sees at "/".
func (m *Manager) rootfs(id string) string { return filepath.Join(m.layerDir(id), "root") }

// writableDir is where the container's own writes land: the overlay's
// upper directory, or the root itself when there is no overlay.
func (m *Manager) writableDir(c *Container) string {
	if c.RootImage != "" {
		return filepath.Join(m.layerDir(c.ID), "upper")
	}
	return m.rootfs(c.ID)
}

// mountRoots makes the roots directory a tmpfs (unless it is one already)
// and unmounts and removes every root in it: at start-up nothing in it is
// in use.
func (m *Manager) mountRoots() error {
	dir := m.opts.RootsDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	if st.Type != unix.TMPFS_MAGIC {
		// What an older wasmcri left on disk here would be hidden by the
		// mount, never reclaimed.
		if err := clearDir(dir); err != nil {
			return err
		}
		// Only directories: a mount point per container, nothing written.
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_NODEV, "mode=0700,size=1m,nr_inodes=1048576"); err != nil {
			return fmt.Errorf("mount tmpfs for container roots at %s: %w", dir, err)
		}
	}
	return m.clearRoots()
}

// clearRoots unmounts and removes every root under the roots directory.
func (m *Manager) clearRoots() error {
	entries, err := os.ReadDir(m.opts.RootsDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if err := m.removeRoot(e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unmountRoots ends every root and the roots tmpfs itself, when the
// manager shuts down: no instance is left to use them.
func (m *Manager) unmountRoots() {
	if err := m.clearRoots(); err != nil {
		m.log.Warn("container roots not removed at shutdown", "error", err)
	}
	if isMountPoint(m.opts.RootsDir) {
		if err := unix.Unmount(m.opts.RootsDir, unix.MNT_DETACH); err != nil {
			m.log.Warn("container roots tmpfs not unmounted", "dir", m.opts.RootsDir, "error", err)
		}
	}
}

// clearDir removes everything in dir.
func clearDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// isMountPoint says whether dir is on another file system than its parent.
func isMountPoint(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// makeRoot makes container c's root: its writable layer, the image's
// files under it, then the files every container gets. On success c holds
// the image's files (c.RootImage) until removeRoot.
func (m *Manager) makeRoot(ctx context.Context, c *containerEntry, img *image.Image, sb Sandbox) error {
	layer := m.layerDir(c.ID)
	if err := os.Mkdir(layer, 0o700); err != nil {
		return fmt.Errorf("create container root: %w", err)
	}
	opts := fmt.Sprintf("mode=0755,size=%d,nr_inodes=%d", m.opts.WritableLayerSize, m.opts.WritableLayerInodes)
	if err := unix.Mount("tmpfs", layer, "tmpfs", unix.MS_NOSUID, opts); err != nil {
		return fmt.Errorf("mount the container's writable layer: %w", err)
	}
	root := m.rootfs(c.ID)
	if err := os.Mkdir(root, 0o755); err != nil {
		return fmt.Errorf("create container root: %w", err)
	}
	if img.Format == image.FormatArtifact {
		if err := seedLayer(root, sb); err != nil {
			return err
		}
	} else if err := m.overlayImage(ctx, c, img, sb); err != nil {
		return err
	}
	if c.WorkingDir == "/" {
		return nil
	}
	// The working directory may be the image's, or lead through its
	// symlinks: it is made inside the root, never out of it.
	r, err := inroot.Open(root)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.MkdirAll(c.WorkingDir, 0o755); err != nil {
		return rootError(img, fmt.Errorf("create the working directory %s: %w", c.WorkingDir, err))
	}
	return nil
}

// overlayImage stacks the container's writable layer over the image's
// unpacked files at its root. The files are held for the container, so
// removing the image leaves them in place until the container goes.
func (m *Manager) overlayImage(ctx context.Context, c *containerEntry, img *image.Image, sb Sandbox) error {
	lower, err := m.images.HoldFilesystem(ctx, img)
	if err != nil {
		return err
	}
	c.RootImage, c.holdsRoot = img.ID, true
	layer := m.layerDir(c.ID)
	upper, work := filepath.Join(layer, "upper"), filepath.Join(layer, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("create container root: %w", err)
		}
	}
	if err := seedLayer(upper, sb); err != nil {
		return err
	}
	for _, p := range []string{lower, upper, work} {
		// The option string's separators; the daemon's own paths, never
		// an image's.
		if strings.ContainsAny(p, ",:") {
			return fmt.Errorf("path %q cannot be part of an overlay mount (it holds ',' or ':')", p)
		}
	}
	// redirect_dir lets a module rename a directory of the image as it
	// could in a root of its own (without it: EXDEV); the redirects are
	// xattrs only the kernel writes, as no WASI call sets xattrs.
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work + ",redirect_dir=on"
	if err := unix.Mount("overlay", m.rootfs(c.ID), "overlay", unix.MS_NOSUID, opts); err != nil {
		return fmt.Errorf("mount the container's root over image %s: %w", img.ID, err)
	}
	return nil
}

// removeRoot unmounts and removes container id's root and writable layer;
// an absent one is no error.
func (m *Manager) removeRoot(id string) error {
	layer := m.layerDir(id)
	for _, p := range []string{m.rootfs(id), layer} {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount %s: %w", p, err)
		}
	}
	return os.RemoveAll(layer)
}

// releaseRoot removes c's root and ends its hold of the image's files.
func (m *Manager) releaseRoot(c *containerEntry) {
	if err := m.removeRoot(c.ID); err != nil {
		m.log.Warn("container root not removed", "container", c.ID, "error", err)
	}
	if c.holdsRoot {
		c.holdsRoot = false
		m.images.ReleaseFilesystem(c.RootImage)
	}
	m.releaseVolumes(c.volumeHolds)
	c.volumeHolds = nil
}

// remakeRoots makes again, at start-up, the roots of containers created
// but never started (and takes again the holds of their image volumes): their roots went with the daemon (or the machine),
// and nothing was written to them yet. A root that cannot be made leaves
// the container to fail its start, saying why.
func (m *Manager) remakeRoots(ctx context.Context) {
	for _, c := range m.containers.all() {
		if c.State != ContainerCreated {
			continue
		}
		sb, err := m.sandboxes.get(c.SandboxID)
		if err != nil {
			continue
		}
		m.holdVolumes(ctx, c)
		img, err := m.images.Get(c.ImageID)
		if err != nil && c.RootImage != "" {
			// Removed while the container held its files, which it holds
			// again: an image record for the overlay is all that is
			// missing.
			img, err = &image.Image{ID: c.RootImage, Format: image.FormatCompat}, nil
		}
		if err == nil {
			err = m.makeRoot(ctx, c, img, sb.Sandbox)
		}
		if err != nil {
			m.log.Warn("root of a created container not made again; its start will fail", "container", c.ID, "error", err)
			m.releaseRoot(c)
		}
	}
}
