package daemon

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clog "github.com/containerd/log"
	"github.com/wasmcri/wasmcri/config"
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
