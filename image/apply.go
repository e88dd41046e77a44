package image

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/internal/inroot"
	"golang.org/x/sys/unix"
)

// maxPathLen bounds entry names and link targets: PATH_MAX, the longest
// path Linux can make. tar's PAX and GNU headers allow a megabyte.
const maxPathLen = 4096

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."     // aufs' own files; no meaning here
	whiteoutOpaque = ".wh..wh..opq" // the directory hides what lower layers put in it
)

// applier writes the entries of one layer into an image tree. Every
// directory an entry goes in is opened by walking to it from the tree's
// root without following any symlink (inroot.OpenDirNoFollow), and the
// entry is made there by name, never followed either: an image's own
// links are for the module to follow at run time, not for unpacking, and
// nothing is written, linked or removed through one.
type applier struct {
	root  *inroot.Root
	layer string // the layer's digest, for messages
	// made holds the paths (hashed, so memory is a few words an entry)
	// this layer created, which an opaque whiteout in it keeps.
	made map[[16]byte]struct{}
	// dir is the directory the last entry went in; entries come grouped
	// by directory, and walking to it again costs a syscall a component.
	dir *inroot.Dir
}

func newApplier(root *inroot.Root, layer string) *applier {
	return &applier{root: root, layer: layer, made: map[[16]byte]struct{}{}}
}

// close releases the directory the applier holds open.
func (a *applier) close() {
	if a.dir != nil {
		a.dir.Close()
		a.dir = nil
	}
}

// refuse is the error for an entry the image must not hold.
func (a *applier) refuse(hdr *tar.Header, format string, args ...any) error {
	return fmt.Errorf("layer %s: entry %q: %s: %w", a.layer, clip(hdr.Name), fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// clip shortens a hostile name for an error message.
func clip(s string) string {
	if len(s) > 256 {
		return s[:256] + fmt.Sprintf("... (%d bytes)", len(s))
	}
	return s
}

// entryPath checks a tar name and returns it relative to the tree's root,
// "" for the root itself.
func (a *applier) entryPath(hdr *tar.Header) (string, error) {
	if len(hdr.Name) > maxPathLen {
		return "", a.refuse(hdr, "name is %d bytes, longer than %d", len(hdr.Name), maxPathLen)
	}
	if len(hdr.Linkname) > maxPathLen {
		return "", a.refuse(hdr, "link target is %d bytes, longer than %d", len(hdr.Linkname), maxPathLen)
	}
	if escapesRoot(hdr.Name) || (hdr.Typeflag == tar.TypeLink && escapesRoot(hdr.Linkname)) {
		return "", a.refuse(hdr, "climbs out of the image root")
	}
	if strings.ContainsRune(hdr.Name, 0) || strings.ContainsRune(hdr.Linkname, 0) {
		return "", a.refuse(hdr, "NUL in a name")
	}
	return strings.TrimPrefix(path.Clean("/"+hdr.Name), "/"), nil
}

// escapesRoot is true for a tar name with a ".." element.
func escapesRoot(name string) bool {
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return true
		}
	}
	return false
}

// apply writes one entry; r reads a regular file's data. It returns the
// bytes of file data written.
func (a *applier) apply(hdr *tar.Header, r io.Reader) (int64, error) {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return 0, nil // PAX defaults for later entries; nothing to make
	}
	rel, err := a.entryPath(hdr)
	if err != nil {
		return 0, err
	}
	if rel == "" {
		if hdr.Typeflag == tar.TypeDir {
			return 0, nil // the root keeps the mode the daemon gave it
		}
		return 0, a.refuse(hdr, "a %s where the image root is", typeName(hdr.Typeflag))
	}
	dir, base := path.Dir(rel), path.Base(rel)
	for _, el := range strings.Split(dir, "/") {
		if strings.HasPrefix(el, whiteoutPrefix) {
			return 0, a.refuse(hdr, "a whiteout name (%s) as a directory", el)
		}
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		return 0, a.whiteout(hdr, dir, base)
	}
	switch hdr.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeRegA, tar.TypeSymlink, tar.TypeLink: //nolint:staticcheck // old tars use TypeRegA
	default:
		return 0, nil // devices, FIFOs, sparse files: nothing a Wasm module can use
	}
	d, err := a.open(hdr, dir, true)
	if err != nil {
		return 0, err
	}
	var n int64
	mode := os.FileMode(hdr.Mode).Perm()
	switch hdr.Typeflag {
	case tar.TypeDir:
		err = a.mkdir(d, base, mode|0o100)
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old tars use TypeRegA
		n, err = a.create(d, base, mode, r)
	case tar.TypeSymlink:
		err = a.replacingDir(d, base, func() error { return d.Symlink(hdr.Linkname, base) })
	case tar.TypeLink:
		err = a.link(hdr, d, base)
	}
	if err != nil {
		return n, a.fsError(hdr, err)
	}
	a.made[pathKey(rel)] = struct{}{}
	return n, nil
}

// open returns the directory dir of the tree (made, with its parents, if
// create), refusing one reached through a symlink. It is nil, without
// create, when dir does not exist.
func (a *applier) open(hdr *tar.Header, dir string, create bool) (*inroot.Dir, error) {
	if a.dir != nil && a.dir.Path() == path.Clean("/"+dir) {
		return a.dir, nil
	}
	d, err := a.root.OpenDirNoFollow(dir, create)
	switch {
	case errors.Is(err, unix.ELOOP):
		return nil, a.refuse(hdr, "its directory %s goes through a symlink", dir)
	case !create && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)):
		return nil, nil
	case err != nil:
		return nil, a.fsError(hdr, err)
	}
	a.close()
	a.dir = d
	return d, nil
}

// removeAll removes child name of d, first letting go of the open
// directory if it is at or under what goes.
func (a *applier) removeAll(d *inroot.Dir, name string) error {
	gone := path.Join(d.Path(), name)
	if a.dir != nil && (a.dir.Path() == gone || strings.HasPrefix(a.dir.Path(), gone+"/")) {
		a.close() // never d itself, whose child goes
	}
	return d.RemoveAll(name)
}

// fsError gives a failure the layer's content caused (a file where a
// directory must be, a link to nothing) the invalid-argument class;
// others (no space left) keep theirs.
func (a *applier) fsError(hdr *tar.Header, err error) error {
	if err == nil {
		return nil
	}
	if errdefs.IsInvalidArgument(err) {
		return err
	}
	if _, ok := errors.AsType[*layerDataError](err); ok {
		return a.refuse(hdr, "%v", err)
	}
	for _, e := range []error{unix.ENOTDIR, unix.EISDIR, unix.ENOENT, unix.ELOOP, unix.EEXIST, unix.EINVAL, unix.ENAMETOOLONG, unix.EMLINK, unix.ENOTEMPTY, unix.EXDEV} {
		if errors.Is(err, e) {
			return a.refuse(hdr, "%v", err)
		}
	}
	return fmt.Errorf("layer %s: entry %q: %w", a.layer, clip(hdr.Name), err)
}

func typeName(t byte) string {
	switch t {
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old tars use TypeRegA
		return "file"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hard link"
	}
	return fmt.Sprintf("type %q entry", t)
}

func pathKey(rel string) [16]byte {
	sum := sha256.Sum256([]byte(rel))
	return [16]byte(sum[:16])
}

// whiteout removes what a lower layer put at dir/name (name without its
// ".wh." prefix), or, for the opaque marker, everything lower layers put in
// dir. It only ever removes a direct child of dir, never dir itself nor
// anything above it.
func (a *applier) whiteout(hdr *tar.Header, dir, base string) error {
	if base != whiteoutOpaque && strings.HasPrefix(base, whiteoutMeta) {
		return nil
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if base != whiteoutOpaque && (name == "" || name == "." || name == "..") {
		return a.refuse(hdr, "a whiteout of %q, which is not a name in its directory", name)
	}
	d, err := a.open(hdr, dir, false)
	if err != nil || d == nil {
		return err // nothing there to hide
	}
	if base != whiteoutOpaque {
		return a.fsError(hdr, a.removeAll(d, name))
	}
	names, err := d.Names()
	if err != nil {
		return a.fsError(hdr, err)
	}
	for _, child := range names {
		if _, mine := a.made[pathKey(path.Join(dir, child))]; mine {
			continue
		}
		if err := a.removeAll(d, child); err != nil {
			return a.fsError(hdr, err)
		}
	}
	return nil
}

// replacingDir runs make, which makes a non-directory at name replacing
// any file or link there; a directory there (a lower layer's, which a
// later layer's file replaces) is removed first.
func (a *applier) replacingDir(d *inroot.Dir, name string, make func() error) error {
	err := make()
	if !errors.Is(err, unix.EISDIR) {
		return err
	}
	if err := a.removeAll(d, name); err != nil {
		return err
	}
	return make()
}

func (a *applier) mkdir(d *inroot.Dir, name string, mode os.FileMode) error {
	fi, err := d.Lstat(name)
	switch {
	case err == nil && fi.IsDir():
		return d.Chmod(name, mode)
	case err == nil:
		if err := a.removeAll(d, name); err != nil {
			return err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	return d.Mkdir(name, mode)
}

func (a *applier) create(d *inroot.Dir, name string, mode os.FileMode, r io.Reader) (int64, error) {
	var f *os.File
	err := a.replacingDir(d, name, func() (err error) {
		f, err = d.Create(name, mode)
		return err
	})
	if err != nil {
		return 0, err
	}
	src := &layerReader{r: r}
	n, err := io.Copy(f, src)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil && src.err != nil {
		return n, &layerDataError{src.err}
	}
	return n, err
}

// layerReader notes a failure to read an entry's data: that is the
// layer's fault (corrupt or cut short), where a failure to write it is
// the node's.
type layerReader struct {
	r   io.Reader
	err error
}

func (l *layerReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if err != nil && err != io.EOF {
		l.err = err
	}
	return n, err
}

// layerDataError is an entry whose data could not be read from its layer.
type layerDataError struct{ err error }

func (e *layerDataError) Error() string { return "its data cannot be read: " + e.err.Error() }
func (e *layerDataError) Unwrap() error { return e.err }

// link makes a hard link to a regular file already in the tree, named by
// a path that goes through no symlink.
func (a *applier) link(hdr *tar.Header, d *inroot.Dir, name string) error {
	target := strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")
	if target == "" {
		return a.refuse(hdr, "a hard link to the image root")
	}
	notFile := a.refuse(hdr, "a hard link to %s, which is not a regular file in the image", clip(hdr.Linkname))
	from, err := a.root.OpenDirNoFollow(path.Dir(target), false)
	switch {
	case errors.Is(err, unix.ELOOP):
		return a.refuse(hdr, "its target's directory %s goes through a symlink", path.Dir(target))
	case err != nil:
		return notFile
	}
	defer from.Close()
	fi, err := from.Lstat(path.Base(target))
	if err != nil || !fi.Mode().IsRegular() {
		return notFile
	}
	if path.Clean("/"+target) == path.Join(d.Path(), name) {
		return nil // a link to itself: already there
	}
	return a.replacingDir(d, name, func() error { return d.Link(from, path.Base(target), name) })
}
