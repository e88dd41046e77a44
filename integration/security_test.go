package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// The attacks of docs/security.md, end to end: images from a real
// registry, modules driven through real crictl, and after each the node
// and the daemon as they were.

// hostCanary is a host directory a hostile image or module aims at.
func hostCanary(t *testing.T) (dir, secret string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "canary")
	os.MkdirAll(dir, 0o700)
	secret = filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("node secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, secret
}

func canaryUntouched(t *testing.T, dir, secret string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("the daemon wrote into a host directory an image or module pointed at: %v", entries)
	}
	if b, _ := os.ReadFile(secret); string(b) != "node secret" {
		t.Fatalf("host file overwritten: %q", b)
	}
}

// A compat image whose /etc climbs out of the root is refused, naming the
// image; one whose read-only path points at a host directory runs without
// showing it; a module renaming a symlink to a host file over kubelet's
// termination-log mount gets nothing copied back. All through crictl.
func TestHostileImageAndModuleThroughCrictl(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	dir, secret := hostCanary(t)
	up := strings.Repeat("../", 20)
	push := func(name string, files ...image.TarEntry) string {
		ref := reg + "/hostile/" + name + ":v1"
		b, err := image.BuildCompat(testmodule.Wasmbox(t), image.CompatOptions{ModulePath: "/bin/wasmbox.wasm", Files: files})
		if err != nil {
			t.Fatal(err)
		}
		if err := image.Push(context.Background(), ref, b, image.RegistryOptions{PlainHTTP: []string{reg}}, nil); err != nil {
			t.Fatal(err)
		}
		d.must("pull", ref)
		return ref
	}
	escaping := push("escaping-etc", image.TarEntry{Name: "/etc", Link: up + strings.TrimPrefix(dir, "/")})
	planter := push("planter", image.TarEntry{Name: "/data/ro", Link: dir})
	termination := filepath.Join(t.TempDir(), "termination-log")
	os.WriteFile(termination, nil, 0o644)
	podCfg := podJSON(t, "hostile")
	pod := strings.TrimSpace(d.must("runp", podCfg))

	_, err := d.run("create", pod, containerJSON(t, "escaping", escaping, []string{"sleep", "3600"}, nil), podCfg)
	if err == nil || !strings.Contains(err.Error(), "code = InvalidArgument") || !strings.Contains(err.Error(), "/etc") {
		t.Fatalf("create from an image whose /etc leaves the root: %v", err)
	}

	ctr := writeJSON(t, "ctr.json", map[string]any{
		"metadata": map[string]any{"name": "planter"},
		"image":    map[string]any{"image": planter},
		"args":     []string{"sleep", "3600"},
		"log_path": "planter.log",
		"mounts":   []map[string]any{{"container_path": "/dev/termination-log", "host_path": termination}},
		"linux":    map[string]any{"security_context": map[string]any{"readonly_paths": []string{"/data/ro"}}},
	})
	id := strings.TrimSpace(d.must("create", pod, ctr, podCfg))
	d.must("start", id)
	d.waitState(id, "CONTAINER_RUNNING", 10*time.Second)
	for _, p := range []string{"/data/ro/secret", "/etc/hostname"} {
		out, _ := d.run("exec", "-s", id, "cat", p)
		if strings.Contains(out, "node secret") {
			t.Fatalf("the module read the host file through %s", p)
		}
	}
	d.must("exec", "-s", id, "sh", "-c", "ln -s "+up+strings.TrimPrefix(secret, "/")+" /x && mv /x /dev/termination-log")
	d.must("stop", id)
	if b, _ := os.ReadFile(termination); strings.Contains(string(b), "node secret") {
		t.Fatalf("the host file was copied into kubelet's termination log: %q", b)
	}
	d.must("rm", id)
	d.must("rmp", "-f", pod)
	canaryUntouched(t, dir, secret)
}

// CRI input the daemon cannot honour is refused naming the field, and the
// daemon goes on serving.
func TestCrictlRefusesUnsafeInput(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	ref := reg + "/wasmcri/hello:v1"
	pushWasm(t, testmodule.Hello(t), ref, "oci")
	d.must("pull", ref)
	podCfg := podJSON(t, "inputs")
	pod := strings.TrimSpace(d.must("runp", podCfg))
	for field, ctr := range map[string]map[string]any{
		"args[0]":  {"metadata": map[string]any{"name": "nul"}, "image": map[string]any{"image": ref}, "args": []string{"a\x00b"}},
		"log_path": {"metadata": map[string]any{"name": "escape"}, "image": map[string]any{"image": ref}, "log_path": "../../../../etc/cron.d/job"},
	} {
		_, err := d.run("create", pod, writeJSON(t, "c.json", ctr), podCfg)
		if err == nil || !strings.Contains(err.Error(), "code = InvalidArgument") || !strings.Contains(err.Error(), field) {
			t.Errorf("create with a bad %s: %v", field, err)
		}
	}
	bad := writeJSON(t, "pod.json", map[string]any{"metadata": map[string]any{"name": "a", "namespace": "x/y", "uid": "u"}})
	if _, err := d.run("runp", bad); err == nil || !strings.Contains(err.Error(), "metadata.namespace") {
		t.Errorf("pod with '/' in its namespace: %v", err)
	}
	d.must("version")
}
