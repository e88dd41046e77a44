// Package testcni gives each test daemon or manager a CNI network of its
// own: real plugins, a bridge and a /24 no other test uses, the bridge
// removed at the end. Pods' namespaces are the test's to remove (they live
// under its state directory).
package testcni

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Dirs are where the tests look for CNI plugins: WASMCRI_CNI_DIRS
// (':'-separated; make test sets it to the node's directories and the
// plugins `make tools` builds), else the node's usual places.
func Dirs() []string {
	if v := os.Getenv("WASMCRI_CNI_DIRS"); v != "" {
		return strings.Split(v, ":")
	}
	return []string{"/usr/lib/cni", "/opt/cni/bin"}
}

// Require returns Dirs when one holds the plugins, and skips the test,
// saying how to get them, when none does.
func Require(t testing.TB) []string {
	t.Helper()
	dirs := Dirs()
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "bridge")); err == nil {
			return dirs
		}
	}
	t.Skipf("no CNI plugins in %s: run the tests with make test, which builds them, or install containernetworking-plugins", strings.Join(dirs, ":"))
	return nil
}

var networks atomic.Int32

// Network names a bridge and a subnet for one test network: base is the
// caller's /16 ("10.252"), each call takes the next /24 of it. The bridge
// is removed when t ends.
func Network(t testing.TB, base string) (bridge, subnet string) {
	t.Helper()
	n := int(networks.Add(1))
	bridge = fmt.Sprintf("wct%d-%d", os.Getpid()%100000, n)
	subnet = fmt.Sprintf("%s.%d.0/24", base, (os.Getpid()+n)%256)
	t.Cleanup(func() { exec.Command("ip", "link", "del", bridge).Run() })
	return bridge, subnet
}

// UnpinAtEnd unpins, when t ends, every network namespace left pinned in
// dir (pods a test did not remove; a daemon keeps them over restarts), so
// that its temporary directory can go.
func UnpinAtEnd(t testing.TB, dir string) {
	t.Cleanup(func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			unix.Unmount(filepath.Join(dir, e.Name()), unix.MNT_DETACH)
		}
	})
}

// Answer writes msg to each connection l accepts, until l is closed: a
// server a test runs inside a pod's namespace.
func Answer(l net.Listener, msg string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		io.WriteString(c, msg)
		c.Close()
	}
}
