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
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/wasm"
	"golang.org/x/sys/unix"
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
// the status reports. It returns cfg, or a copy with the mounts resolved.
func (m *Manager) resolveImageMounts(ctx context.Context, cfg *runtimeapi.ContainerConfig) (*runtimeapi.ContainerConfig, error) {
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
			return nil, fmt.Errorf("image volume at %s must be read-only: %w", mnt.GetContainerPath(), errdefs.ErrInvalidArgument)
		}
		img, err := m.images.Get(mnt.GetImage().GetImage())
		if err != nil {
			return nil, fmt.Errorf("image volume at %s: %w", mnt.GetContainerPath(), err)
		}
		dir, err := m.images.Filesystem(ctx, img)
		if err != nil {
			return nil, err
		}
		if sub := mnt.GetImageSubPath(); sub != "" {
			clean := strings.TrimPrefix(path.Clean("/"+sub), "/")
			if err := noSymlinkOnPath(dir, clean); err != nil {
				return nil, err
			}
			dir = filepath.Join(dir, filepath.FromSlash(clean))
			if _, err := os.Stat(dir); err != nil {
				return nil, fmt.Errorf("image volume at %s: sub path %q is not in image %s: %w", mnt.GetContainerPath(), sub, img.ID, errdefs.ErrInvalidArgument)
			}
		}
		mnt.HostPath = dir
		mnt.Image.ImageRef = img.ID
	}
	return resolved, nil
}

// noSymlinkOnPath refuses a path in an unpacked image that passes through a
// symlink: it could point anywhere on the host.
func noSymlinkOnPath(root, rel string) error {
	p := root
	for _, el := range strings.Split(rel, "/") {
		if el == "" {
			continue
		}
		p = filepath.Join(p, el)
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("image sub path %q goes through a symlink: %w", rel, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// fileMount is a file placed into the container root.
type fileMount struct {
	host, inRoot string
	writable     bool
}

// placeMounts returns the directories to preopen (the root first) and
// places file mounts into rootfs.
//
// A read-only directory mount is read-only all the way down when it is
// recursive; when it is not, as on Linux, the mounts below its host path
// keep their own mode: each writable one is preopened writable.
func placeMounts(rootfs string, readonlyRoot bool, mounts []*runtimeapi.Mount) ([]wasm.Dir, []fileMount, error) {
	dirs := []wasm.Dir{{Host: rootfs, Guest: "/", ReadOnly: readonlyRoot}}
	var files []fileMount
	for _, mnt := range mounts {
		guest := path.Clean(mnt.GetContainerPath())
		fi, err := os.Stat(mnt.GetHostPath())
		if err != nil {
			return nil, nil, fmt.Errorf("mount %s: %w", mnt.GetHostPath(), err)
		}
		if fi.IsDir() {
			// The mount point exists in the root too, so listing its parent
			// shows it, as on Linux.
			if err := os.MkdirAll(inRoot(rootfs, guest), 0o755); err != nil {
				return nil, nil, err
			}
			dirs = append(dirs, wasm.Dir{Host: mnt.GetHostPath(), Guest: guest, ReadOnly: mnt.GetReadonly()})
			if mnt.GetReadonly() && !mnt.GetRecursiveReadOnly() {
				for _, sub := range writableMountsUnder(mnt.GetHostPath()) {
					rel, _ := filepath.Rel(mnt.GetHostPath(), sub)
					dirs = append(dirs, wasm.Dir{Host: sub, Guest: path.Join(guest, filepath.ToSlash(rel))})
				}
			}
			continue
		}
		f := fileMount{host: mnt.GetHostPath(), inRoot: inRoot(rootfs, guest), writable: !mnt.GetReadonly()}
		if err := os.MkdirAll(filepath.Dir(f.inRoot), 0o755); err != nil {
			return nil, nil, err
		}
		os.Remove(f.inRoot)
		if f.writable && os.Link(f.host, f.inRoot) == nil {
			files = append(files, f)
			continue
		}
		mode := fi.Mode().Perm()
		if !f.writable {
			mode &^= 0o222
		}
		if err := copyFile(f.host, f.inRoot, mode); err != nil {
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
			if dir := filepath.Dir(f.inRoot); f.writable && !seen[dir] {
				seen[dir] = true
				rel, _ := filepath.Rel(rootfs, dir)
				dirs = append(dirs, wasm.Dir{Host: dir, Guest: path.Join("/", filepath.ToSlash(rel))})
			}
		}
	}
	return dirs, files, nil
}

// restrictPaths applies a container's masked and read-only paths, as runc
// does over its mounts: a masked directory shows empty (the empty
// read-only directory preopened over it), a masked file becomes a
// /dev/null node, a read-only directory is preopened read-only. Paths the
// container does not hold are ignored, as runc ignores them. A file in a
// host mount is refused rather than changed on the host, and so is a
// read-only file: a preopen can only make a directory read-only.
func restrictPaths(dirs []wasm.Dir, empty string, masked, readonly []string) ([]wasm.Dir, error) {
	mounts := dirs
	for _, p := range masked {
		host, own := hostPath(mounts, p)
		fi, err := os.Lstat(host)
		if err != nil {
			continue
		}
		if fi.IsDir() {
			dirs = append(dirs, wasm.Dir{Host: empty, Guest: path.Clean(p), ReadOnly: true})
			continue
		}
		if !own {
			return nil, fmt.Errorf("masked path %s is a file of a host mount: %w", p, errdefs.ErrInvalidArgument)
		}
		if err := os.Remove(host); err != nil {
			return nil, err
		}
		if err := unix.Mknod(host, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			return nil, fmt.Errorf("mask %s: %w", p, err)
		}
	}
	for _, p := range readonly {
		host, _ := hostPath(mounts, p)
		fi, err := os.Stat(host)
		if err != nil {
			continue
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("read-only path %s is not a directory; only directories can be made read-only: %w", p, errdefs.ErrInvalidArgument)
		}
		dirs = append(dirs, wasm.Dir{Host: host, Guest: path.Clean(p), ReadOnly: true})
	}
	return dirs, nil
}

// hostPath is where guest path p lives on the host: under the preopen
// with the longest guest prefix, as the module resolves it. own says that
// preopen is the container's root, not a host mount.
func hostPath(dirs []wasm.Dir, p string) (host string, own bool) {
	p = path.Clean("/" + p)
	best := -1
	for i, d := range dirs {
		if (p == d.Guest || d.Guest == "/" || strings.HasPrefix(p, d.Guest+"/")) && (best < 0 || len(d.Guest) > len(dirs[best].Guest)) {
			best = i
		}
	}
	rel := strings.TrimPrefix(p, dirs[best].Guest)
	return filepath.Join(dirs[best].Host, filepath.FromSlash(rel)), best == 0
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
// are not (or no longer) the host file itself.
func copyBack(files []fileMount) error {
	var errs []error
	for _, f := range files {
		if !f.writable {
			continue
		}
		in, err1 := os.Stat(f.inRoot)
		host, err2 := os.Stat(f.host)
		if err1 != nil || err2 != nil || os.SameFile(in, host) {
			continue
		}
		if err := copyFile(f.inRoot, f.host, host.Mode().Perm()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
