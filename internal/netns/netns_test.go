package netns

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func mounted(t *testing.T, p string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), " "+p+" ")
}

// A namespace made here is not the host's: a socket made inside it by Do
// is unreachable from the host's loopback, and no thread stays behind in
// it.
func TestCreateDoRemove(t *testing.T) {
	dir := t.TempDir()
	path, err := Create(dir, "pod-a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Remove(path) })
	if !IsPinned(path) || !mounted(t, path) {
		t.Fatalf("%s is not a pinned namespace", path)
	}
	host := inode(t, "/proc/thread-self/ns/net")
	if inode(t, path) == host || inode(t, "/proc/self/ns/net") != host {
		t.Fatal("the new namespace is the host's, or the main thread moved to it")
	}
	if _, err := Create(dir, "pod-a"); err == nil {
		t.Fatal("a second namespace under one name")
	}

	var inside net.Listener
	var here uint64
	err = Do(path, func() error {
		here = inode(t, "/proc/thread-self/ns/net")
		var err error
		inside, err = net.Listen("tcp", "0.0.0.0:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if here != inode(t, path) {
		t.Fatalf("Do ran in namespace %d, not %d", here, inode(t, path))
	}
	port := inside.Addr().(*net.TCPAddr).Port
	if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
		c.Close()
		t.Fatal("the host's loopback reached a socket made inside the namespace")
	}
	// The threads Create and Do used went home: whichever thread runs
	// this now, the main one included, is in the host's namespace.
	for range 20 {
		if inode(t, "/proc/thread-self/ns/net") != host || inode(t, "/proc/self/ns/net") != host {
			t.Fatal("a thread was left in the pod's namespace")
		}
		runtime.Gosched()
	}

	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) || mounted(t, path) {
		t.Fatalf("after Remove: %v, mounted %v", err, mounted(t, path))
	}
	if err := Remove(path); err != nil {
		t.Fatalf("removing again: %v", err)
	}
	if names, err := List(dir); err != nil || len(names) != 0 {
		t.Fatalf("left: %v %v", names, err)
	}
}

func TestCreateRefusesPaths(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"", ".", "..", "a/b", "../x"} {
		if _, err := Create(dir, name); err == nil {
			t.Errorf("%q accepted", name)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "x")); err == nil {
		t.Error("a file was made outside dir")
	}
}
