package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	clog "github.com/containerd/log"
	"github.com/wasmcri/wasmcri/config"
	"github.com/wasmcri/wasmcri/internal/testcni"
)

func testConfig(t *testing.T) *config.Config {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "wcri")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Root, cfg.State, cfg.GRPC.Address = filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(sockDir, "cri.sock")
	// A network of the test's own: the daemon attaches its pool at start.
	cfg.Network.CNIBinDirs, cfg.Network.CNIConfDir = testcni.Dirs(), filepath.Join(dir, "net.d")
	cfg.Network.DefaultBridge, cfg.Network.DefaultSubnet = testcni.Network(t, "10.250")
	testcni.UnpinAtEnd(t, filepath.Join(cfg.State, "netns"))
	return cfg
}

// A state database a machine crash left unreadable is set aside, and the
// daemon starts anyway; image metadata is untouched.
func TestUnreadableStateDBIsSetAside(t *testing.T) {
	clog.SetLevel("error")
	cfg := testConfig(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := Start(cfg, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	d.Stop(time.Second)

	statePath := filepath.Join(cfg.Root, "state.db")
	garbage := make([]byte, 64<<10)
	for i := range garbage {
		garbage[i] = byte(i * 7)
	}
	if err := os.WriteFile(statePath, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err = Start(cfg, "test", log)
	if err != nil {
		t.Fatalf("daemon refused to start over a corrupt state database: %v", err)
	}
	defer d.Stop(time.Second)
	entries, _ := os.ReadDir(cfg.Root)
	var aside bool
	for _, e := range entries {
		aside = aside || strings.HasPrefix(e.Name(), "state.db.corrupt-")
	}
	if !aside {
		t.Fatalf("corrupt state database not kept aside: %v", entries)
	}
	if len(d.Sandboxes.Sandboxes()) != 0 {
		t.Fatal("sandboxes from a corrupt database")
	}
}

// A second daemon on the same root is refused while the first runs.
func TestOneDaemonPerRoot(t *testing.T) {
	clog.SetLevel("error")
	cfg := testConfig(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := Start(cfg, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop(time.Second)
	other := *cfg
	other.GRPC.Address = cfg.GRPC.Address + "2"
	if _, err := Start(&other, "test", log); err == nil || !strings.Contains(err.Error(), "another wasmcri") {
		t.Fatalf("second daemon on one root: %v", err)
	}
}

// The daemon's directories are closed to other local users, whatever mode
// they had, and each socket has its final mode from the moment it exists;
// pprof is served only on a root-only socket.
func TestNodePermissions(t *testing.T) {
	clog.SetLevel("error")
	cfg := testConfig(t)
	cfg.Debug.PprofAddress = filepath.Join(filepath.Dir(cfg.GRPC.Address), "pprof.sock")
	for _, dir := range []string{cfg.Root, cfg.State} {
		os.MkdirAll(dir, 0o777)
		os.Chmod(dir, 0o777) // as a careless operator left them
	}
	d, err := Start(cfg, "test", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop(time.Second)
	for path, want := range map[string]os.FileMode{
		cfg.Root: 0o700, cfg.State: 0o700,
		cfg.GRPC.Address: 0o660, cfg.AdminSocket(): 0o600, cfg.Debug.PprofAddress: 0o600,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	// No temporary listening directory is left beside the sockets.
	entries, _ := os.ReadDir(filepath.Dir(cfg.GRPC.Address))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".listen-") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dialer net.Dialer
		return dialer.DialContext(ctx, "unix", cfg.Debug.PprofAddress)
	}}}
	resp, err := client.Get("http://pprof/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("pprof over its socket: %s", resp.Status)
	}
}

// A socket is created with its final mode: even under a umask that would
// open it to everyone, no one can connect before it is in place.
func TestListenUnixNeverWider(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	// Watch the directory for the socket's name while it is created: it
	// appears only once, already with its mode.
	fd, err := syscall.InotifyInit()
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if _, err := syscall.InotifyAddWatch(fd, dir, syscall.IN_CREATE|syscall.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s.sock")
	l, err := listenUnix(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	buf := make([]byte, 64<<10)
	n, err := syscall.Read(fd, buf)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < n; {
		ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := strings.TrimRight(string(buf[off+syscall.SizeofInotifyEvent:off+syscall.SizeofInotifyEvent+int(ev.Len)]), "\x00")
		if name == "s.sock" && ev.Mask&syscall.IN_CREATE != 0 {
			t.Fatal("the socket was created in place, under the umask's mode, before it was restricted")
		}
		off += syscall.SizeofInotifyEvent + int(ev.Len)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi, err)
	}
}
