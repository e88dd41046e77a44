// Package inroot does file operations inside a directory tree that someone
// untrusted shapes: a container's writable root (an image's files, then
// whatever its module makes there), an unpacked image, a volume a module
// writes to. The daemon runs as root, so one symlink followed out of the
// tree reads or overwrites a host file.
//
// Every path is resolved inside the root, as if the root were "/": ".."
// stops at the root and absolute symlinks are taken relative to it
// (openat2's RESOLVE_IN_ROOT, through filepath-securejoin, as runc and
// containerd do). The final component is never followed: operations act
// on the name itself (O_NOFOLLOW, *at calls without AT_SYMLINK_FOLLOW),
// and whatever non-directory stands where a file is created is replaced,
// never written through.
package inroot

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/cyphar/filepath-securejoin/pathrs-lite/procfs"
	"golang.org/x/sys/unix"
)

// Root is an open directory that paths are resolved in.
type Root struct {
	dir  *os.File // O_PATH handle: the root stays the same directory
	path string
}

// Open opens the directory at dir as a root. dir itself is trusted (the
// daemon made it); nothing below it is.
func Open(dir string) (*Root, error) {
	f, err := os.OpenFile(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &Root{dir: f, path: dir}, nil
}

// Close releases the root.
func (r *Root) Close() error { return r.dir.Close() }

// Path is the root's host path, for messages.
func (r *Root) Path() string { return r.path }

// split cleans rel as an absolute path in the root and returns its parent
// and final name. The root itself has no final name.
func split(rel string) (dir, name string, err error) {
	clean := path.Clean("/" + rel)
	if clean == "/" {
		return "", "", fmt.Errorf("%q names the root itself", rel)
	}
	return path.Dir(clean), path.Base(clean), nil
}

// Dir resolves directory rel in the root (symlinks on the way resolved
// inside it) and opens it for operations on its children by name. With
// create, missing directories are made with mode 0o755. Resolving once and
// acting on several children costs one path walk instead of one each.
func (r *Root) Dir(rel string, create bool) (*Dir, error) {
	var h *os.File
	var err error
	if create {
		h, err = pathrs.MkdirAllHandle(r.dir, rel, 0o755)
	} else {
		h, err = pathrs.OpenatInRoot(r.dir, rel)
	}
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", rel, r.path, err)
	}
	defer h.Close()
	f, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", rel, r.path, err)
	}
	return &Dir{f: f, rel: path.Clean("/" + rel), r: r}, nil
}

// parent opens the directory rel is in and returns rel's final name.
func (r *Root) parent(rel string, create bool) (*Dir, string, error) {
	dir, name, err := split(rel)
	if err != nil {
		return nil, "", err
	}
	d, err := r.Dir(dir, create)
	if err != nil {
		return nil, "", err
	}
	return d, name, nil
}

// at runs fn on rel's parent directory and final name.
func at[T any](r *Root, rel string, create bool, fn func(d *Dir, name string) (T, error)) (T, error) {
	d, name, err := r.parent(rel, create)
	if err != nil {
		var zero T
		return zero, err
	}
	defer d.Close()
	return fn(d, name)
}

// do is at for operations with no result.
func do(r *Root, rel string, create bool, fn func(d *Dir, name string) error) error {
	_, err := at(r, rel, create, func(d *Dir, name string) (struct{}, error) { return struct{}{}, fn(d, name) })
	return err
}

// MkdirAll makes directory rel and any missing parents with mode.
func (r *Root) MkdirAll(rel string, mode os.FileMode) error {
	h, err := pathrs.MkdirAllHandle(r.dir, rel, mode)
	if err != nil {
		return fmt.Errorf("mkdir %s in %s: %w", rel, r.path, err)
	}
	return h.Close()
}

// OpenDir returns an O_PATH handle of directory rel, resolved in the root.
// The handle pins the directory: a later rename or symlink swap in the
// tree cannot redirect it. Its /proc/self/fd path reaches it for as long as
// it stays open.
func (r *Root) OpenDir(rel string) (*os.File, error) {
	h, err := pathrs.OpenatInRoot(r.dir, rel)
	if err != nil {
		return nil, err
	}
	fi, err := h.Stat()
	if err != nil {
		h.Close()
		return nil, err
	}
	if !fi.IsDir() {
		h.Close()
		return nil, fmt.Errorf("%s in %s: %w", rel, r.path, unix.ENOTDIR)
	}
	return h, nil
}

// Lstat describes what stands at rel, without following it if it is a
// symlink.
func (r *Root) Lstat(rel string) (fs.FileInfo, error) {
	return at(r, rel, false, (*Dir).Lstat)
}

func lstatAt(d *os.File, name string) (fs.FileInfo, error) {
	fd, err := unix.Openat(int(d.Fd()), name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return f.Stat()
}

// replaceable removes whatever non-directory stands at name in d, so that
// a new entry can be made there without writing through it.
func replaceable(d *os.File, name string) error {
	err := unix.Unlinkat(int(d.Fd()), name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if errors.Is(err, unix.EISDIR) {
		return &fs.PathError{Op: "replace", Path: name, Err: unix.EISDIR}
	}
	return &fs.PathError{Op: "replace", Path: name, Err: err}
}

// Create makes a new regular file at rel with exactly mode (whatever the
// umask), replacing any file, symlink or node already there; a directory
// there is an error. Missing parents are made. The caller writes and
// closes the file.
func (r *Root) Create(rel string, mode os.FileMode) (*os.File, error) {
	return at(r, rel, true, func(d *Dir, name string) (*os.File, error) { return d.Create(name, mode) })
}

// WriteFile creates rel (see Create) holding b.
func (r *Root) WriteFile(rel string, b []byte, mode os.FileMode) error {
	return do(r, rel, true, func(d *Dir, name string) error { return d.WriteFile(name, b, mode) })
}

// CopyFrom creates rel (see Create) as a copy of src with src's
// permission bits, or mode when mode is not 0.
func (r *Root) CopyFrom(src *os.File, rel string, mode os.FileMode) error {
	return do(r, rel, true, func(d *Dir, name string) error { return d.CopyFrom(src, name, mode) })
}

// OpenRegular opens the regular file at rel for reading. A symlink, a
// device or anything else but a regular file at rel is refused, so that
// reading it never reaches outside the root or blocks on a FIFO.
func (r *Root) OpenRegular(rel string) (*os.File, error) {
	return at(r, rel, false, (*Dir).OpenRegular)
}

// Mknod makes a character device node at rel with exactly perm,
// replacing any non-directory there.
func (r *Root) Mknod(rel string, perm os.FileMode, major, minor uint32) error {
	return do(r, rel, true, func(d *Dir, name string) error { return d.Mknod(name, perm, major, minor) })
}

// Symlink makes a symlink at rel pointing at target (which is never
// resolved here), replacing any non-directory there.
func (r *Root) Symlink(target, rel string) error {
	return do(r, rel, true, func(d *Dir, name string) error { return d.Symlink(target, name) })
}

// Link hard-links the file at hostPath (a path the daemon trusts, outside
// any root) to rel, replacing any non-directory there.
func (r *Root) Link(hostPath, rel string) error {
	return do(r, rel, true, func(d *Dir, name string) error { return d.LinkHost(hostPath, name) })
}

// OpenResolved opens the regular file rel names for reading, following
// symlinks (the final one too) as if the root were "/": every link, however
// absolute or however many "..", resolves inside the root. It returns the
// file with its path in the root ("/bin/app.wasm"). Anything but a regular
// file where the resolution ends is refused without opening it, so a FIFO
// never blocks the caller.
func (r *Root) OpenResolved(rel string) (*os.File, string, error) {
	h, err := pathrs.OpenatInRoot(r.dir, rel)
	if err != nil {
		return nil, "", fmt.Errorf("resolve %s in %s: %w", rel, r.path, err)
	}
	defer h.Close()
	fi, err := h.Stat()
	if err != nil {
		return nil, "", err
	}
	if !fi.Mode().IsRegular() {
		return nil, "", fmt.Errorf("%s in %s is not a regular file (%s)", rel, r.path, fi.Mode().Type())
	}
	inRoot, err := r.pathOf(h)
	if err != nil {
		return nil, "", err
	}
	f, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err != nil {
		return nil, "", fmt.Errorf("open %s in %s: %w", rel, r.path, err)
	}
	return f, inRoot, nil
}

// pathOf is where handle h, opened in the root, sits in it.
func (r *Root) pathOf(h *os.File) (string, error) {
	rootPath, err := procfs.ProcSelfFdReadlink(r.dir)
	if err != nil {
		return "", err
	}
	p, err := procfs.ProcSelfFdReadlink(h)
	if err != nil {
		return "", err
	}
	if p == rootPath {
		return "/", nil
	}
	if rootPath == "/" {
		return p, nil
	}
	rest, ok := strings.CutPrefix(p, rootPath+"/")
	if !ok {
		// Cannot happen for a handle resolved in the root, unless the
		// tree was moved out from under it meanwhile.
		return "", fmt.Errorf("%s is not under %s", p, rootPath)
	}
	return "/" + rest, nil
}

// Dir is an open directory of a root, for operations on its direct
// children by name: a single path element, never "." or "..", and never
// followed if it is a symlink. The handle pins the directory: renames or
// symlink swaps in the tree cannot redirect it.
type Dir struct {
	f   *os.File // O_RDONLY|O_DIRECTORY
	rel string
	r   *Root
}

// OpenDirNoFollow opens directory rel by walking it from the root one
// component at a time without following any symlink: a symlink anywhere on
// the path is an error wrapping unix.ELOOP, whatever it points at. With
// create, missing directories are made with mode 0o755 (a non-directory
// in the way is unix.ENOTDIR).
func (r *Root) OpenDirNoFollow(rel string, create bool) (*Dir, error) {
	clean := path.Clean("/" + rel)
	cur, err := unix.Openat(int(r.dir.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	for _, el := range strings.Split(clean, "/") {
		if el == "" {
			continue
		}
		next, err := unix.Openat(cur, el, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(cur, el, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(cur, el, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			// O_NOFOLLOW|O_DIRECTORY fails ENOTDIR on a symlink on some
			// kernels and ELOOP on others: tell the two apart.
			var st unix.Stat_t
			if unix.Fstatat(cur, el, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = unix.ELOOP
			} else {
				err = unix.ENOTDIR
			}
		}
		unix.Close(cur)
		if err != nil {
			return nil, fmt.Errorf("%s in %s: at %s: %w", rel, r.path, el, err)
		}
		cur = next
	}
	return &Dir{f: os.NewFile(uintptr(cur), path.Join(r.path, clean)), rel: clean, r: r}, nil
}

// Close releases the directory.
func (d *Dir) Close() error { return d.f.Close() }

// Path is the directory's path in the root, for messages.
func (d *Dir) Path() string { return d.rel }

func (d *Dir) fd() int { return int(d.f.Fd()) }

func (d *Dir) child(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return fmt.Errorf("%q in %s is not a name in a directory: %w", name, d.rel, unix.EINVAL)
	}
	return nil
}

func (d *Dir) errorf(op, name string, err error) error {
	return fmt.Errorf("%s %s in %s: %w", op, path.Join(d.rel, name), d.r.path, err)
}

// Lstat describes child name, not following it.
func (d *Dir) Lstat(name string) (fs.FileInfo, error) {
	if err := d.child(name); err != nil {
		return nil, err
	}
	return lstatAt(d.f, name)
}

// Create makes a new regular file name with exactly mode, replacing any
// non-directory there (a symlink is replaced, never written through).
func (d *Dir) Create(name string, mode os.FileMode) (*os.File, error) {
	if err := d.child(name); err != nil {
		return nil, err
	}
	if err := replaceable(d.f, name); err != nil {
		return nil, d.errorf("create", name, err)
	}
	fd, err := unix.Openat(d.fd(), name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(mode.Perm()))
	if err != nil {
		return nil, d.errorf("create", name, err)
	}
	f := os.NewFile(uintptr(fd), path.Join(d.r.path, d.rel, name))
	if err := unix.Fchmod(fd, uint32(mode.Perm())); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// WriteFile creates name (see Create) holding b.
func (d *Dir) WriteFile(name string, b []byte, mode os.FileMode) error {
	f, err := d.Create(name, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// CopyFrom creates name (see Create) as a copy of src with src's
// permission bits, or mode when mode is not 0.
func (d *Dir) CopyFrom(src *os.File, name string, mode os.FileMode) error {
	if mode == 0 {
		fi, err := src.Stat()
		if err != nil {
			return err
		}
		mode = fi.Mode().Perm()
	}
	f, err := d.Create(name, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// OpenRegular opens the regular file name for reading; a symlink, a
// device or anything else is refused.
func (d *Dir) OpenRegular(name string) (*os.File, error) {
	if err := d.child(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(d.fd(), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, d.errorf("open", name, err)
	}
	f := os.NewFile(uintptr(fd), path.Join(d.r.path, d.rel, name))
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = d.errorf("open", name, fmt.Errorf("not a regular file (%s)", fi.Mode().Type()))
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Mknod makes character device node name with exactly perm, replacing any
// non-directory there.
func (d *Dir) Mknod(name string, perm os.FileMode, major, minor uint32) error {
	if err := d.child(name); err != nil {
		return err
	}
	if err := replaceable(d.f, name); err != nil {
		return d.errorf("mknod", name, err)
	}
	if err := unix.Mknodat(d.fd(), name, unix.S_IFCHR|uint32(perm.Perm()), int(unix.Mkdev(major, minor))); err != nil {
		return d.errorf("mknod", name, err)
	}
	return unix.Fchmodat(d.fd(), name, uint32(perm.Perm()), 0)
}

// LinkHost hard-links the file at hostPath (a path the daemon trusts,
// outside any root) to name, replacing any non-directory there.
func (d *Dir) LinkHost(hostPath, name string) error {
	if err := d.child(name); err != nil {
		return err
	}
	if err := replaceable(d.f, name); err != nil {
		return d.errorf("link", name, err)
	}
	if err := unix.Linkat(unix.AT_FDCWD, hostPath, d.fd(), name, 0); err != nil {
		return d.errorf("link", name, err)
	}
	return nil
}

// Mkdir makes directory name with exactly mode; anything already there
// is unix.EEXIST.
func (d *Dir) Mkdir(name string, mode os.FileMode) error {
	if err := d.child(name); err != nil {
		return err
	}
	if err := unix.Mkdirat(d.fd(), name, 0o700); err != nil {
		return d.errorf("mkdir", name, err)
	}
	return d.Chmod(name, mode)
}

// Chmod sets the permission bits of child name, refusing a symlink.
func (d *Dir) Chmod(name string, mode os.FileMode) error {
	if err := d.child(name); err != nil {
		return err
	}
	fd, err := unix.Openat(d.fd(), name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return d.errorf("chmod", name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return d.errorf("chmod", name, unix.ELOOP)
	}
	return os.Chmod("/proc/self/fd/"+strconv.Itoa(fd), mode.Perm())
}

// Symlink makes symlink name pointing at target (never resolved here),
// replacing any non-directory there.
func (d *Dir) Symlink(target, name string) error {
	if err := d.child(name); err != nil {
		return err
	}
	if err := replaceable(d.f, name); err != nil {
		return d.errorf("symlink", name, err)
	}
	if err := unix.Symlinkat(target, d.fd(), name); err != nil {
		return d.errorf("symlink", name, err)
	}
	return nil
}

// Link hard-links the regular file fromName of directory from to name,
// replacing any non-directory there. Anything but a regular file at
// fromName is refused: a link to a symlink would be the symlink again.
func (d *Dir) Link(from *Dir, fromName, name string) error {
	if err := from.child(fromName); err != nil {
		return err
	}
	if err := d.child(name); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(from.fd(), fromName, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return from.errorf("link", fromName, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return from.errorf("link", fromName, fmt.Errorf("not a regular file: %w", unix.EINVAL))
	}
	if err := replaceable(d.f, name); err != nil {
		return d.errorf("link", name, err)
	}
	if err := unix.Linkat(from.fd(), fromName, d.fd(), name, 0); err != nil {
		return d.errorf("link", name, err)
	}
	return nil
}

// RemoveAll removes child name and, if it is a directory, everything
// below it, following nothing. An absent name is not an error.
func (d *Dir) RemoveAll(name string) error {
	if err := d.child(name); err != nil {
		return err
	}
	return os.RemoveAll("/proc/self/fd/" + strconv.Itoa(d.fd()) + "/" + name)
}

// Names lists the directory.
func (d *Dir) Names() ([]string, error) {
	fd, err := unix.Openat(d.fd(), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), d.rel)
	defer f.Close()
	return f.Readdirnames(-1)
}
