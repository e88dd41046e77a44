package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/wasmcri/wasmcri/internal/inroot"
	"github.com/wasmcri/wasmcri/wasm"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// WASI can only preopen directories, so the two kinds of CRI mount reach
// the module differently:
//
//   - a directory is preopened at its container path (read-only when asked):
//     the module sees that directory and nothing around it;
//   - a file is placed into the container's writable root at its container
//     path: hard-linked when writable (so writes, such as a termination
//     message, land in the host file kubelet reads), copied when read-only
//     (a link would let the module write through to the host file), and
//     copied back at exit if the link was impossible or was replaced.
//
// The container root is the module's to shape: it can plant symlinks and
// rename them over its mounted files while it runs, and a compat image
// brings symlinks of its own. So every path inside the root is resolved
// with inroot (inside the root, final components never followed), and a
// directory preopened from inside the root is passed to wasmtime as the
// /proc/self/fd path of a handle that pins it.

// checkMounts refuses mounts that cannot be honoured, at creation.
func checkMounts(mounts []*runtimeapi.Mount) error {
	for _, mnt := range mounts {
		cp, hp := mnt.GetContainerPath(), mnt.GetHostPath()
		if mnt.GetRecursiveReadOnly() {
			if !mnt.GetReadonly() {
				return fmt.Errorf("mount at %s: recursive read-only needs readonly: %w", cp, errdefs.ErrInvalidArgument)
			}
			if p := mnt.GetPropagation(); p != runtimeapi.MountPropagation_PROPAGATION_PRIVATE {
				return fmt.Errorf("mount at %s: recursive read-only needs private propagation, not %s: %w", cp, p, errdefs.ErrInvalidArgument)
			}
		}
		if !path.IsAbs(cp) || path.Clean(cp) == "/" {
			return fmt.Errorf("mount container path %q must be absolute and not /: %w", cp, errdefs.ErrInvalidArgument)
		}
		if !filepath.IsAbs(hp) {
			return fmt.Errorf("mount host path %q must be absolute: %w", hp, errdefs.ErrInvalidArgument)
		}
		fi, err := os.Stat(hp)
		if err != nil {
			return fmt.Errorf("mount of %s at %s: %v: %w", hp, cp, err, errdefs.ErrInvalidArgument)
		}
		if !fi.IsDir() && !fi.Mode().IsRegular() {
			return fmt.Errorf("mount of %s at %s: only directories and regular files can be mounted into a Wasm container: %w", hp, cp, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// resolveImageMounts turns image volumes into read-only directory mounts
// of the image's unpacked files (at its sub path), recording the image ID
// the status reports. It returns cfg, or a copy with the mounts resolved,
// and the IDs of the images whose files it holds for the container
// (removing such an image leaves its files until releaseRoot); on error
// it holds none. A sub path is resolved inside the image's files: its
// symlinks are the image's and never lead out of them.
func (m *Manager) resolveImageMounts(ctx context.Context, cfg *runtimeapi.ContainerConfig) (_ *runtimeapi.ContainerConfig, held []string, err error) {
	defer func() {
		if err != nil {
			m.releaseVolumes(held)
			held = nil
		}
	}()
	resolved := cfg
	for i, mnt := range cfg.GetMounts() {
		if mnt.GetImage() == nil {
			continue
		}
		if resolved == cfg {
			resolved = proto.Clone(cfg).(*runtimeapi.ContainerConfig)
		}
		mnt = resolved.Mounts[i]
		if !mnt.GetReadonly() {
			return nil, held, fmt.Errorf("image volume at %s must be read-only: %w", mnt.GetContainerPath(), errdefs.ErrInvalidArgument)
		}
		img, err := m.images.Get(mnt.GetImage().GetImage())
		if err != nil {
			return nil, held, fmt.Errorf("image volume at %s: %w", mnt.GetContainerPath(), err)
		}
		dir, err := m.images.HoldFilesystem(ctx, img)
		if err != nil {
			return nil, held, err
		}
		held = append(held, img.ID)
		if sub := mnt.GetImageSubPath(); sub != "" {
			// The unpacked image never changes (modules only ever see it
			// read-only), so the resolved path stays what it was resolved to.
			if dir, err = securejoin.SecureJoin(dir, sub); err != nil {
				return nil, held, fmt.Errorf("image volume at %s: sub path %q: %v: %w", mnt.GetContainerPath(), sub, err, errdefs.ErrInvalidArgument)
			}
			if _, err := os.Lstat(dir); err != nil {
				return nil, held, fmt.Errorf("image volume at %s: sub path %q is not in image %s: %w", mnt.GetContainerPath(), sub, img.ID, errdefs.ErrInvalidArgument)
			}
		}
		mnt.HostPath = dir
		mnt.Image.ImageRef = img.ID
	}
	return resolved, held, nil
}

// releaseVolumes ends the holds of image volumes' files.
func (m *Manager) releaseVolumes(held []string) {
	for _, id := range held {
		m.images.ReleaseFilesystem(id)
	}
}

// holdVolumes takes again, at start-up, the holds of a created
// container's image volumes on their images' files.
func (m *Manager) holdVolumes(ctx context.Context, c *containerEntry) {
	for _, mnt := range c.Config.GetMounts() {
		id := mnt.GetImage().GetImageRef()
		if id == "" {
			continue
		}
		if err := m.images.Hold(ctx, id); err != nil {
			m.log.Warn("image volume's files not held", "container", c.ID, "image", id, "error", err)
			continue
		}
		c.volumeHolds = append(c.volumeHolds, id)
	}
}

// fileMount is a file placed into the container root.
type fileMount struct {
	// host is the file kubelet mounts; guest its path in the container.
	host, guest string
	writable    bool
}

// preopens are the directories an instance of a container sees, and the
// handles that pin those of them that lie inside the container's root.
type preopens struct {
	dirs    []wasm.Dir
	handles []*os.File
}

// pin adds the directory at rel in root (a handle, so the module cannot
// swap it for a symlink later) as guest.
func (p *preopens) pin(root *inroot.Root, rel, guest string, readOnly bool) error {
	h, err := root.OpenDir(rel)
	if err != nil {
		return err
	}
	p.handles = append(p.handles, h)
	p.dirs = append(p.dirs, wasm.Dir{Host: "/proc/self/fd/" + strconv.Itoa(int(h.Fd())), Guest: guest, ReadOnly: readOnly})
	return nil
}

func (p *preopens) close() {
	for _, h := range p.handles {
		h.Close()
	}
	p.handles = nil
}

// placeMounts returns the directories to preopen (the container root
// first) and places file mounts into the root.
//
// A read-only directory mount is read-only all the way down when it is
// recursive; when it is not, as on Linux, the mounts below its host path
// keep their own mode: each writable one is preopened writable.
func placeMounts(root *inroot.Root, readonlyRoot bool, mounts []*runtimeapi.Mount) (*preopens, []fileMount, error) {
	p := &preopens{dirs: []wasm.Dir{{Host: root.Path(), Guest: "/", ReadOnly: readonlyRoot}}}
	var files []fileMount
	for _, mnt := range mounts {
		guest := path.Clean(mnt.GetContainerPath())
		fi, err := os.Stat(mnt.GetHostPath())
		if err != nil {
			p.close()
			return nil, nil, fmt.Errorf("mount %s: %w", mnt.GetHostPath(), err)
		}
		if fi.IsDir() {
			// The mount point exists in the root too, so listing its parent
			// shows it, as on Linux.
			if err := root.MkdirAll(guest, 0o755); err != nil {
				p.close()
				return nil, nil, fmt.Errorf("mount point %s: %w", guest, err)
			}
			p.dirs = append(p.dirs, wasm.Dir{Host: mnt.GetHostPath(), Guest: guest, ReadOnly: mnt.GetReadonly()})
			if mnt.GetReadonly() && !mnt.GetRecursiveReadOnly() {
				for _, sub := range writableMountsUnder(mnt.GetHostPath()) {
					rel, _ := filepath.Rel(mnt.GetHostPath(), sub)
					p.dirs = append(p.dirs, wasm.Dir{Host: sub, Guest: path.Join(guest, filepath.ToSlash(rel))})
				}
			}
			continue
		}
		f := fileMount{host: mnt.GetHostPath(), guest: guest, writable: !mnt.GetReadonly()}
		if err := placeFile(root, f); err != nil {
			p.close()
			return nil, nil, fmt.Errorf("mount %s at %s: %w", f.host, guest, err)
		}
		files = append(files, f)
	}
	// A read-only root still lets the module write its writable file
	// mounts (such as the termination message): their directories in the
	// container's own root are preopened writable.
	if readonlyRoot {
		seen := map[string]bool{}
		for _, f := range files {
			if dir := path.Dir(f.guest); f.writable && !seen[dir] {
				seen[dir] = true
				if err := p.pin(root, dir, dir, false); err != nil {
					p.close()
					return nil, nil, fmt.Errorf("mount %s at %s: %w", f.host, f.guest, err)
				}
			}
		}
	}
	return p, files, nil
}

// placeFile puts a file mount into the root, replacing whatever the image
// had there: the host file itself (a hard link) when writable and on the
// same filesystem, else a copy with the host file's exact mode.
func placeFile(root *inroot.Root, f fileMount) error {
	if f.writable && root.Link(f.host, f.guest) == nil {
		return nil
	}
	src, err := os.Open(f.host)
	if err != nil {
		return err
	}
	defer src.Close()
	return root.CopyFrom(src, f.guest, 0)
}

// restrictPaths applies a container's masked and read-only paths, as runc
// does over its mounts: a masked directory shows empty (the empty
// read-only directory preopened over it), a masked file becomes a
// /dev/null node, a read-only directory is preopened read-only. Paths the
// container does not hold are ignored, as runc ignores them. A file in a
// host mount is refused rather than changed on the host, and so is a
// read-only file: a preopen can only make a directory read-only. Each path
// is resolved inside the preopen it falls in.
func restrictPaths(p *preopens, root *inroot.Root, empty string, masked, readonly []string) error {
	mounts := slices.Clone(p.dirs)
	for _, m := range masked {
		if err := inPreopen(mounts, root, m, func(r *inroot.Root, rel string, own bool) error {
			fi, err := r.Lstat(rel)
			switch {
			case err != nil:
				return nil // absent, or not reachable inside the root: nothing to mask
			case fi.IsDir():
				p.dirs = append(p.dirs, wasm.Dir{Host: empty, Guest: path.Clean(m), ReadOnly: true})
				return nil
			case !own:
				return fmt.Errorf("masked path %s is a file of a host mount: %w", m, errdefs.ErrInvalidArgument)
			}
			if err := r.Mknod(rel, 0o666, 1, 3); err != nil {
				return fmt.Errorf("mask %s: %w", m, err)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	for _, ro := range readonly {
		if err := inPreopen(mounts, root, ro, func(r *inroot.Root, rel string, _ bool) error {
			err := p.pin(r, rel, path.Clean(ro), true)
			switch {
			case err == nil, errors.Is(err, syscall.ENOENT):
				return nil // absent: nothing to protect
			case errors.Is(err, syscall.ENOTDIR):
				return fmt.Errorf("read-only path %s is not a directory; only directories can be made read-only: %w", ro, errdefs.ErrInvalidArgument)
			}
			return fmt.Errorf("read-only path %s: %w", ro, err)
		}); err != nil {
			return err
		}
	}
	return nil
}

// inPreopen calls fn with the root that guest path p falls in (the
// container's own root, or a host mount's directory, opened as a root so
// that what the module made in it is resolved inside it too) and p
// relative to it.
func inPreopen(mounts []wasm.Dir, own *inroot.Root, p string, fn func(r *inroot.Root, rel string, own bool) error) error {
	i, rel := longestPreopen(mounts, p)
	if i == 0 {
		return fn(own, rel, true)
	}
	r, err := inroot.Open(mounts[i].Host)
	if err != nil {
		return err
	}
	defer r.Close()
	return fn(r, rel, false)
}

// longestPreopen finds the preopen guest path p falls in (the one with the
// longest guest prefix, as the module resolves it) and p relative to it.
func longestPreopen(dirs []wasm.Dir, p string) (int, string) {
	p = path.Clean("/" + p)
	best := -1
	for i, d := range dirs {
		if (p == d.Guest || d.Guest == "/" || strings.HasPrefix(p, d.Guest+"/")) && (best < 0 || len(d.Guest) > len(dirs[best].Guest)) {
			best = i
		}
	}
	return best, "/" + strings.TrimPrefix(strings.TrimPrefix(p, dirs[best].Guest), "/")
}

// writableMountsUnder lists the read-write mount points strictly below dir.
func writableMountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[4], real+"/") {
			continue
		}
		if slices.Contains(strings.Split(f[5], ","), "rw") {
			out = append(out, filepath.Join(dir, strings.TrimPrefix(f[4], real)))
		}
	}
	return out
}

// copyBack returns what the module wrote into writable file mounts that
// are not (or no longer) the host file itself. Only a regular file at the
// mount's path in the root is read: a symlink the module put there (to a
// host file, through a relative path climbing out, or renamed over the
// mount) is never followed.
func copyBack(root *inroot.Root, files []fileMount) error {
	var errs []error
	for _, f := range files {
		if !f.writable {
			continue
		}
		if err := copyBackOne(root, f); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.guest, err))
		}
	}
	return errors.Join(errs...)
}

func copyBackOne(root *inroot.Root, f fileMount) error {
	in, err := root.OpenRegular(f.guest)
	if errors.Is(err, syscall.ENOENT) {
		return nil // the module removed it: the host file keeps what it had
	}
	if err != nil {
		return err
	}
	defer in.Close()
	inInfo, err1 := in.Stat()
	hostInfo, err2 := os.Stat(f.host)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	if os.SameFile(inInfo, hostInfo) {
		return nil
	}
	// The host file is kubelet's (its path and parents are not the
	// module's to change); only what is read above came from the root.
	out, err := os.OpenFile(f.host, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
