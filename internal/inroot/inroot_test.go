package inroot

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// hostile makes a root whose tree points out of it every way a symlink
// can, beside a canary directory holding one file. It returns the root
// and the canary.
func hostile(t *testing.T) (*Root, string) {
	t.Helper()
	top := t.TempDir()
	canary := filepath.Join(top, "canary")
	if err := os.MkdirAll(canary, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(canary, "secret"), []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(top, "root")
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"abs":        canary,                  // absolute, to the host path
		"rel":        "../canary",             // relative, climbing out
		"sub/deep":   "../../../../../canary", // climbing far out
		"file":       filepath.Join(canary, "secret"),
		"rel-file":   "../canary/secret",
		"sub/loop-a": "loop-b",
		"sub/loop-b": "loop-a",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	r, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, canary
}

// untouched fails the test if the canary changed.
func untouched(t *testing.T, canary string) {
	t.Helper()
	entries, err := os.ReadDir(canary)
	if err != nil {
		t.Fatalf("canary: %v", err)
	}
	if len(entries) != 1 || entries[0].Name() != "secret" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("canary directory changed: %v", names)
	}
	b, err := os.ReadFile(filepath.Join(canary, "secret"))
	if err != nil || string(b) != "host secret" {
		t.Fatalf("canary file changed: %q %v", b, err)
	}
	fi, _ := os.Stat(filepath.Join(canary, "secret"))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("canary mode changed: %v", fi.Mode())
	}
}

func TestWritesStayInRoot(t *testing.T) {
	r, canary := hostile(t)
	// "rel" resolves to <root>/canary once that exists; "abs" to
	// <root>/<canary's host path>, which does not: writing through a
	// dangling link is refused rather than followed.
	if err := os.Mkdir(filepath.Join(r.Path(), "canary"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"rel/new", "sub/deep/new", "../../canary/new", "rel/secret"} {
		if err := r.WriteFile(rel, []byte("attacker"), 0o644); err != nil {
			t.Fatalf("write %s: %v", rel, err)
		}
	}
	for _, rel := range []string{"abs/new", "/abs/x/y/z", "abs/secret"} {
		if err := r.WriteFile(rel, []byte("attacker"), 0o644); err == nil {
			t.Fatalf("write %s through a dangling in-root symlink succeeded", rel)
		}
	}
	// A final symlink is replaced, not written through.
	for _, rel := range []string{"file", "rel-file"} {
		if err := r.WriteFile(rel, []byte("mine"), 0o644); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(filepath.Join(r.Path(), rel))
		if err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("%s is not a new regular file: %v %v", rel, fi, err)
		}
	}
	if err := r.Mknod("rel/null", 0o666, 1, 3); err != nil {
		t.Fatal(err)
	}
	if err := r.Symlink("/etc/passwd", "rel/link"); err != nil {
		t.Fatal(err)
	}
	if err := r.MkdirAll("sub/deep/dir/inside", 0o755); err != nil {
		t.Fatal(err)
	}
	untouched(t, canary)
	// What the hostile paths named landed inside the root, where the
	// symlinks resolve when the root is "/".
	for _, name := range []string{"new", "secret", "null", "link", "dir/inside"} {
		if _, err := os.Lstat(filepath.Join(r.Path(), "canary", name)); err != nil {
			t.Fatalf("%s not inside the root: %v", name, err)
		}
	}
}

func TestLoopsAndMissingAreErrors(t *testing.T) {
	r, canary := hostile(t)
	if err := r.WriteFile("sub/loop-a/x", nil, 0o644); err == nil {
		t.Fatal("write through a symlink loop succeeded")
	}
	if _, err := r.OpenRegular("missing"); !os.IsNotExist(err) && !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("open missing: %v", err)
	}
	if _, err := r.Create("/", 0o644); err == nil {
		t.Fatal("created the root itself")
	}
	untouched(t, canary)
}

func TestReadsNeverFollowOut(t *testing.T) {
	r, canary := hostile(t)
	for _, rel := range []string{"file", "rel-file", "abs/secret", "rel/secret", "sub/deep/secret"} {
		f, err := r.OpenRegular(rel)
		if err == nil {
			b, _ := io.ReadAll(f)
			f.Close()
			if strings.Contains(string(b), "host secret") {
				t.Fatalf("read the host file through %s", rel)
			}
			t.Fatalf("%s opened: %q", rel, b)
		}
	}
	// A FIFO is refused, without blocking.
	if err := syscall.Mkfifo(filepath.Join(r.Path(), "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.OpenRegular("fifo"); err == nil {
		t.Fatal("opened a FIFO as a regular file")
	}
	fi, err := r.Lstat("file")
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("lstat of a symlink: %v %v", fi, err)
	}
	if h, err := r.OpenDir("abs"); err == nil {
		// Resolved in the root: the absolute link names <root>/<canary path>,
		// which does not exist.
		h.Close()
		t.Fatal("opened the host directory through an absolute symlink")
	}
	untouched(t, canary)
}

func TestOpenDirPinsTheDirectory(t *testing.T) {
	r, canary := hostile(t)
	if err := r.MkdirAll("data", 0o755); err != nil {
		t.Fatal(err)
	}
	h, err := r.OpenDir("data")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// Swap the directory for a symlink out of the root: the handle still
	// reaches the directory it was opened on.
	if err := os.Rename(filepath.Join(r.Path(), "data"), filepath.Join(r.Path(), "moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(canary, filepath.Join(r.Path(), "data")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("/proc/self/fd", itoa(h.Fd()), "through-handle"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r.Path(), "moved", "through-handle")); err != nil {
		t.Fatalf("the handle did not stay on its directory: %v", err)
	}
	untouched(t, canary)
}

func TestCreateKeepsExactMode(t *testing.T) {
	r, _ := hostile(t)
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, mode := range []os.FileMode{0o400, 0o640, 0o644, 0o755} {
		if err := r.WriteFile("m", []byte("x"), mode); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(filepath.Join(r.Path(), "m"))
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("mode %v became %v (%v)", mode, fi.Mode().Perm(), err)
		}
	}
}

func itoa(fd uintptr) string { return strconv.FormatUint(uint64(fd), 10) }

// OpenResolved follows links, the final one too, but only ever to files in
// the root: the links planted to the host resolve to the root's own paths.
func TestOpenResolvedStaysInRoot(t *testing.T) {
	r, canary := hostile(t)
	// Nothing in the root yet where the links lead: every one fails, none
	// reads the host file.
	for _, rel := range []string{"file", "rel-file", "abs/secret", "rel/secret", "sub/deep/secret", "sub/loop-a", "sub", "missing"} {
		if f, _, err := r.OpenResolved(rel); err == nil {
			b, _ := io.ReadAll(f)
			f.Close()
			t.Fatalf("%s opened: %q", rel, b)
		}
	}
	// Give the relative links their in-root target: they reach it, and
	// report where it is in the root.
	if err := r.WriteFile("canary/secret", []byte("in root"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"rel-file", "rel/secret", "sub/deep/secret", "/../../canary/secret"} {
		f, at, err := r.OpenResolved(rel)
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		b, _ := io.ReadAll(f)
		f.Close()
		if string(b) != "in root" || at != "/canary/secret" {
			t.Fatalf("%s resolved to %s holding %q", rel, at, b)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(r.Path(), "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.Symlink("/fifo", "to-fifo"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.OpenResolved("to-fifo"); err == nil {
		t.Fatal("opened a FIFO as a regular file")
	}
	untouched(t, canary)
}

func TestOpenDirNoFollowRefusesLinks(t *testing.T) {
	r, canary := hostile(t)
	for _, rel := range []string{"abs", "rel", "abs/x", "rel/x/y", "sub/deep", "sub/deep/x", "sub/loop-a", "/../rel/new"} {
		for _, create := range []bool{false, true} {
			d, err := r.OpenDirNoFollow(rel, create)
			if err == nil {
				d.Close()
				t.Fatalf("%s (create %v) opened", rel, create)
			}
			if !errors.Is(err, syscall.ELOOP) {
				t.Fatalf("%s (create %v): %v, want ELOOP", rel, create, err)
			}
		}
	}
	if _, err := r.OpenDirNoFollow("file/x", true); !errors.Is(err, syscall.ELOOP) {
		t.Fatalf("through a file symlink: %v", err)
	}
	if err := r.WriteFile("plain", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.OpenDirNoFollow("plain/x", true); !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("through a file: %v", err)
	}
	d, err := r.OpenDirNoFollow("/made/here/../deeper", true)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if fi, err := os.Lstat(filepath.Join(r.Path(), "made", "deeper")); err != nil || !fi.IsDir() {
		t.Fatalf("missing directories not made: %v %v", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(r.Path(), "canary")); !os.IsNotExist(err) {
		t.Fatalf("something was made where a link led: %v", err)
	}
	untouched(t, canary)
}

// A Dir's operations act on its children themselves: symlinks among them
// are replaced, removed or refused, never followed.
func TestDirChildrenAreNeverFollowed(t *testing.T) {
	r, canary := hostile(t)
	d, err := r.OpenDirNoFollow("/", false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sub, err := r.OpenDirNoFollow("sub", false)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for _, name := range []string{"..", ".", "", "a/b"} {
		if _, err := d.Create(name, 0o644); err == nil {
			t.Fatalf("created %q", name)
		}
		if err := d.RemoveAll(name); err == nil {
			t.Fatalf("removed %q", name)
		}
	}
	if err := d.Chmod("file", 0o777); !errors.Is(err, syscall.ELOOP) {
		t.Fatalf("chmod of a symlink: %v", err)
	}
	if err := d.Mkdir("abs", 0o755); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("mkdir over a symlink: %v", err)
	}
	if err := d.Link(d, "file", "hard"); err == nil {
		t.Fatal("hard-linked a symlink")
	}
	if err := sub.Link(d, "rel", "hard"); err == nil {
		t.Fatal("hard-linked a symlink to a directory")
	}
	for _, name := range []string{"file", "rel-file"} {
		f, err := d.Create(name, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("mine"))
		f.Close()
		if fi, err := d.Lstat(name); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", name, fi, err)
		}
	}
	if err := sub.Link(d, "file", "hard"); err != nil {
		t.Fatal(err)
	}
	if err := d.Symlink("/etc/shadow", "abs"); err != nil {
		t.Fatal(err)
	}
	if err := d.Mkdir("dir", 0o750); err != nil {
		t.Fatal(err)
	}
	if fi, _ := d.Lstat("dir"); !fi.IsDir() || fi.Mode().Perm() != 0o750 {
		t.Fatalf("dir mode %v", fi.Mode())
	}
	for _, name := range []string{"rel", "abs"} {
		if err := d.RemoveAll(name); err != nil {
			t.Fatal(err)
		}
	}
	names, err := sub.Names()
	if err != nil || !slices.Contains(names, "hard") || !slices.Contains(names, "deep") {
		t.Fatalf("sub lists %v, %v", names, err)
	}
	untouched(t, canary)
}

// A Dir stays on its directory when the tree is rearranged under it.
func TestDirIsPinned(t *testing.T) {
	r, canary := hostile(t)
	d, err := r.OpenDirNoFollow("data", true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := os.Rename(filepath.Join(r.Path(), "data"), filepath.Join(r.Path(), "moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(canary, filepath.Join(r.Path(), "data")); err != nil {
		t.Fatal(err)
	}
	f, err := d.Create("new", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := os.Stat(filepath.Join(r.Path(), "moved", "new")); err != nil {
		t.Fatalf("the Dir did not stay on its directory: %v", err)
	}
	untouched(t, canary)
}
