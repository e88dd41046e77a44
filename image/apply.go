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

// applier writes the entries of one layer into an image tree. Every path
// is resolved inside the tree (inroot), and on top of that no entry is
// made, removed or linked to through a symlink of the tree: an image's own
// links are for the module to follow at run time, not for unpacking.
type applier struct {
	root  *inroot.Root
	layer string // the layer's digest, for messages
	// made holds the paths (hashed, so memory is a few words an entry)
	// this layer created, which an opaque whiteout in it keeps.
	made map[[16]byte]struct{}
	// plainDir is the last parent directory found to have no symlink on
	// its path; entries come grouped by directory. Anything that can turn
	// a directory into a link (removal, a new symlink) forgets it.
	plainDir string
}

func newApplier(root *inroot.Root, layer string) *applier {
	return &applier{root: root, layer: layer, made: map[[16]byte]struct{}{}, plainDir: "\x00"}
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
	if err := a.noSymlinkIn(hdr, dir); err != nil {
		return 0, err
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		return 0, a.whiteout(hdr, dir, base)
	}

	mode := os.FileMode(hdr.Mode).Perm()
	switch hdr.Typeflag {
	case tar.TypeDir:
		err = a.mkdir(rel, mode|0o100)
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old tars use TypeRegA
		var n int64
		n, err = a.create(rel, mode, r)
		if err == nil {
			a.mark(rel)
		}
		return n, a.fsError(hdr, err)
	case tar.TypeSymlink:
		a.plainDir = "\x00"
		if err = a.clearDir(rel); err == nil {
			err = a.root.Symlink(hdr.Linkname, rel)
		}
	case tar.TypeLink:
		err = a.link(hdr, rel)
	default:
		return 0, nil // devices, FIFOs, sparse files: nothing a Wasm module can use
	}
	if err == nil {
		a.mark(rel)
	}
	return 0, a.fsError(hdr, err)
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

// noSymlinkIn refuses an entry whose parent directory, dir, is reached
// through a symlink of the tree.
func (a *applier) noSymlinkIn(hdr *tar.Header, dir string) error {
	if dir == "." || dir == a.plainDir {
		return nil
	}
	if err := a.root.NoSymlink(dir); err != nil {
		if errors.Is(err, unix.ELOOP) {
			return a.refuse(hdr, "its directory %s goes through a symlink", dir)
		}
		return a.fsError(hdr, err)
	}
	a.plainDir = dir
	return nil
}

// mark remembers that this layer made rel.
func (a *applier) mark(rel string) {
	a.made[pathKey(rel)] = struct{}{}
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
	a.plainDir = "\x00"
	switch {
	case base == whiteoutOpaque:
		names, err := a.root.ReadDirNames(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return a.fsError(hdr, err)
		}
		for _, name := range names {
			child := path.Join(dir, name)
			if _, mine := a.made[pathKey(child)]; mine {
				continue
			}
			if err := a.root.RemoveAll(child); err != nil {
				return a.fsError(hdr, err)
			}
		}
		return nil
	case strings.HasPrefix(base, whiteoutMeta):
		return nil
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if name == "" || name == "." || name == ".." {
		return a.refuse(hdr, "a whiteout of %q, which is not a name in its directory", name)
	}
	return a.fsError(hdr, a.root.RemoveAll(path.Join(dir, name)))
}

// clearDir removes a directory standing where a non-directory goes, as a
// later layer's file replaces a lower layer's directory. Files and links
// there are replaced by inroot itself.
func (a *applier) clearDir(rel string) error {
	fi, err := a.root.Lstat(rel)
	if err != nil || !fi.IsDir() {
		return nil
	}
	a.plainDir = "\x00"
	return a.root.RemoveAll(rel)
}

func (a *applier) mkdir(rel string, mode os.FileMode) error {
	fi, err := a.root.Lstat(rel)
	switch {
	case err == nil && !fi.IsDir():
		if err := a.root.RemoveAll(rel); err != nil {
			return err
		}
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if err := a.root.MkdirAll(rel, 0o755); err != nil {
		return err
	}
	return a.root.Chmod(rel, mode)
}

func (a *applier) create(rel string, mode os.FileMode, r io.Reader) (int64, error) {
	if err := a.clearDir(rel); err != nil {
		return 0, err
	}
	f, err := a.root.Create(rel, mode)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// link makes a hard link to a regular file already in the tree, named by
// a path that goes through no symlink.
func (a *applier) link(hdr *tar.Header, rel string) error {
	target := strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")
	if target == "" {
		return a.refuse(hdr, "a hard link to the image root")
	}
	if err := a.noSymlinkIn(hdr, path.Dir(target)); err != nil {
		return err
	}
	fi, err := a.root.Lstat(target)
	if err != nil || !fi.Mode().IsRegular() {
		return a.refuse(hdr, "a hard link to %s, which is not a regular file in the image", clip(hdr.Linkname))
	}
	if target == rel {
		return nil
	}
	if err := a.clearDir(rel); err != nil {
		return err
	}
	return a.root.LinkInRoot(target, rel)
}
