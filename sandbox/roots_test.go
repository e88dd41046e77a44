package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// A module cannot write more than its writable layer holds, and filling
// its layer takes nothing from another container's.
func TestWritableLayerIsBounded(t *testing.T) {
	e := newEnv(t)
	e.m.Shutdown()
	e.m = e.managerWith(Options{WritableLayerSize: 1 << 20, WritableLayerInodes: 64})
	img := e.hostileImage("bounded")
	sb := e.sandbox("bounded")
	sh := func(c Container, script string) (int32, string) {
		t.Helper()
		code, out, errOut, err := e.m.ExecSync(context.Background(), c.ID, []string{"sh", "-c", script}, 30, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		return code, string(out) + string(errOut)
	}
	filler := e.start(sb, ctrConfig("filler", img, "sleep", "3600"))
	other := e.start(sb, ctrConfig("other", img, "sleep", "3600"))
	// The module file (megabytes) copied into the layer.
	if code, out := sh(filler, "dd if=/bin/wasmbox.wasm of=/big bs=65536"); code == 0 {
		t.Errorf("wrote the module file (%d bytes) into a 1 MiB writable layer: %s", len(testmodule.Wasmbox(t)), out)
	}
	var names []string
	for i := range 100 {
		names = append(names, fmt.Sprint("f", i))
	}
	if code, out := sh(filler, "rm /big; for f in "+strings.Join(names, " ")+"; do echo x > /$f || exit 7; done"); code != 7 {
		t.Errorf("creating files past the layer's inodes: exit %d: %s", code, out)
	}
	if code, out := sh(other, "dd if=/bin/wasmbox.wasm of=/half bs=65536 count=8 && echo done"); code != 0 || !strings.Contains(out, "done") {
		t.Errorf("a full layer took room from another container's: %d %s", code, out)
	}
}

// Removing an image leaves the files a container's root shows until the
// container goes; the root never copied them.
func TestImageRemovedUnderItsContainer(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	img := e.hostileImage("removed", imagebuild.TarEntry{Name: "/etc/motd", Data: []byte("from the image\n")})
	got, err := e.images.Get(img)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := e.images.Filesystem(ctx, got)
	if err != nil {
		t.Fatal(err)
	}
	sb := e.sandbox("removed")
	c := e.start(sb, ctrConfig("app", img, "sleep", "3600"))
	if err := e.images.Remove(ctx, img); err != nil {
		t.Fatal(err)
	}
	// The root the running module sees (read here from the node's side:
	// a new instance would need the removed image's module).
	if got := readFile(t, filepath.Join(e.m.rootfs(c.ID), "etc", "motd")); got != "from the image\n" {
		t.Fatalf("the root after its image was removed shows %q", got)
	}
	if err := e.m.StopContainer(c.ID, 0); err != nil {
		t.Fatal(err)
	}
	if n, err := e.images.CollectFilesystems(ctx); n != 0 || err != nil {
		t.Errorf("collected %d trees (%v) while a container holds one", n, err)
	}
	if _, err := os.Stat(filepath.Join(tree, "etc", "motd")); err != nil {
		t.Fatalf("the image's files went while its container exists: %v", err)
	}
	if err := e.m.RemoveContainer(c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tree); !os.IsNotExist(err) {
		t.Errorf("the removed image's files outlived its last container: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(e.dir, "root", "roots")); len(entries) != 0 {
		t.Errorf("roots left after the remove: %v", entries)
	}
}

// The node's resolv.conf is read again when it changes.
func TestNodeResolvConfFollowsChanges(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	f := &fileCache{path: p}
	if f.read() != nil {
		t.Fatal("a missing file read as something")
	}
	os.WriteFile(p, []byte("nameserver 10.0.0.1\n"), 0o644)
	if got := string(f.read()); got != "nameserver 10.0.0.1\n" {
		t.Fatalf("read %q", got)
	}
	os.WriteFile(p, []byte("nameserver 10.0.0.22\n"), 0o644)
	if got := string(f.read()); got != "nameserver 10.0.0.22\n" {
		t.Fatalf("after a change, read %q", got)
	}
}
