package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
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

// A compat image whose /etc climbs out of the root gets the container's own
// /etc over it, nothing written through the link; one whose read-only path points at a host directory runs without
// showing it; a module renaming a symlink to a host file over kubelet's
// termination-log mount gets nothing copied back. All through crictl.
func TestHostileImageAndModuleThroughCrictl(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	dir, secret := hostCanary(t)
	up := strings.Repeat("../", 20)
	push := func(name string, files ...imagebuild.TarEntry) string {
		ref := reg + "/hostile/" + name + ":v1"
		b, err := imagebuild.BuildCompat(testmodule.Wasmbox(t), imagebuild.CompatOptions{ModulePath: "/bin/wasmbox.wasm", Files: files})
		if err != nil {
			t.Fatal(err)
		}
		if err := imagebuild.Push(context.Background(), ref, b, image.RegistryOptions{PlainHTTP: []string{reg}}, nil); err != nil {
			t.Fatal(err)
		}
		d.must("pull", ref)
		return ref
	}
	escaping := push("escaping-etc", imagebuild.TarEntry{Name: "/etc", Link: up + strings.TrimPrefix(dir, "/")})
	planter := push("planter", imagebuild.TarEntry{Name: "/data/ro", Link: dir})
	termination := filepath.Join(t.TempDir(), "termination-log")
	os.WriteFile(termination, nil, 0o644)
	podCfg := podJSON(t, "hostile")
	pod := strings.TrimSpace(d.must("runp", podCfg))

	esc := strings.TrimSpace(d.must("create", pod, containerJSON(t, "escaping", escaping, []string{"sleep", "3600"}, nil), podCfg))
	d.must("start", esc)
	d.waitState(esc, "CONTAINER_RUNNING", 10*time.Second)
	if out := d.must("exec", "-s", esc, "cat", "/etc/hostname"); !strings.Contains(out, "hostile") {
		t.Errorf("the container's /etc/hostname over an image's escaping /etc reads %q", out)
	}
	canaryUntouched(t, dir, secret)
	d.must("rm", "-f", esc)

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

// Modules that attack the daemon's limits, run through crictl: a start
// section that loops forever is started, exec'd with a timeout, stopped
// and removed; a table bomb under a memory limit ends OOMKilled. A
// neighbour pod runs throughout, and the daemon answers after.
func TestHostileModulesThroughCrictl(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	hello := reg + "/wasmcri/hello:v1"
	pushWasm(t, testmodule.Hello(t), hello, "oci")
	spin := reg + "/hostile/start-spin:v1"
	pushWasm(t, testmodule.Wat(t, testmodule.StartSpin), spin, "oci")
	bomb := reg + "/hostile/table-bomb:v1"
	pushWasm(t, testmodule.Wat(t, testmodule.TableBomb), bomb, "oci")
	for _, ref := range []string{hello, spin, bomb} {
		d.must("pull", ref)
	}
	neighbourPod := strings.TrimSpace(d.must("runp", podJSON(t, "neighbour")))
	neighbour := strings.TrimSpace(d.must("create", neighbourPod, containerJSON(t, "ticker", hello, []string{"sleep-forever"}, nil), podJSON(t, "neighbour")))
	d.must("start", neighbour)

	podCfg := podJSON(t, "attacks")
	pod := strings.TrimSpace(d.must("runp", podCfg))
	spinner := strings.TrimSpace(d.must("create", pod, containerJSON(t, "spinner", spin, nil, nil), podCfg))
	d.must("start", spinner)
	d.waitState(spinner, "CONTAINER_RUNNING", 10*time.Second)
	if _, err := d.run("exec", "-s", "--timeout", "1", spinner, "x"); err == nil || !strings.Contains(err.Error(), "DeadlineExceeded") {
		t.Errorf("exec of a module whose start section loops, past its timeout: %v", err)
	}
	d.must("stop", spinner)
	if st := d.waitState(spinner, "CONTAINER_EXITED", 10*time.Second); st["exitCode"] != float64(137) {
		t.Errorf("stopped start-section loop: exit %v, reason %v", st["exitCode"], st["reason"])
	}
	d.must("rm", spinner)

	bomber := writeJSON(t, "bomber.json", map[string]any{
		"metadata": map[string]any{"name": "bomber"},
		"image":    map[string]any{"image": bomb},
		"log_path": "bomber.log",
		"linux":    map[string]any{"resources": map[string]any{"memory_limit_in_bytes": 64 << 20}},
	})
	id := strings.TrimSpace(d.must("create", pod, bomber, podCfg))
	d.must("start", id)
	if st := d.waitState(id, "CONTAINER_EXITED", 30*time.Second); st["reason"] != "OOMKilled" || st["exitCode"] != float64(137) {
		t.Errorf("table bomb under 64 MiB: exit %v, reason %v, message %v", st["exitCode"], st["reason"], st["message"])
	}
	if st := d.inspect(neighbour); st["state"] != "CONTAINER_RUNNING" {
		t.Fatalf("the neighbour pod's container is %v", st["state"])
	}
	d.must("version")
}

// A small gzip layer that unpacks to far more than image.max_unpacked_size
// is refused at pull, naming the limit; nothing of it stays, and the
// daemon pulls and runs the next image.
func TestPullBombThroughCrictl(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemonWithConfig(t, "[image]\nmax_unpacked_size = 16777216\n")
	ref := reg + "/hostile/gzip-bomb:v1"
	layer, diffID := gzipBomb(t, testmodule.Hello(t), 256<<20)
	b := &imagebuild.Built{}
	l := b.Add(ocispec.MediaTypeImageLayerGzip, layer)
	cfg := b.AddJSON(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: ocispec.Platform{OS: "wasip1", Architecture: "wasm"},
		Config:   ocispec.ImageConfig{Entrypoint: []string{"/app.wasm"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
	})
	b.SetManifest(ocispec.MediaTypeImageManifest, cfg, []ocispec.Descriptor{l}, nil)
	if err := imagebuild.Push(context.Background(), ref, b, image.RegistryOptions{PlainHTTP: []string{reg}}, nil); err != nil {
		t.Fatal(err)
	}
	_, err := d.run("pull", ref)
	if err == nil || !strings.Contains(err.Error(), "code = InvalidArgument") || !strings.Contains(err.Error(), "image.max_unpacked_size") {
		t.Fatalf("pull of a %d-byte layer unpacking to 256 MiB: %v", len(layer), err)
	}
	if out := d.must("images", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("images after the refused pull: %q", out)
	}
	if entries, _ := os.ReadDir(filepath.Join(d.root, "image-fs")); len(entries) != 0 {
		t.Fatalf("unpacked leftovers of the refused pull: %v", entries)
	}
	hello := reg + "/wasmcri/hello:v1"
	pushWasm(t, testmodule.Hello(t), hello, "compat")
	d.must("pull", hello)
}

// gzipBomb is a gzip tar layer holding module at /app.wasm and a file of
// size zero bytes, and the layer's diff_id.
func gzipBomb(t *testing.T, module []byte, size int64) ([]byte, digest.Digest) {
	t.Helper()
	var out bytes.Buffer
	gz := gzip.NewWriter(&out)
	h := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, h))
	for _, f := range []struct {
		name string
		size int64
		data io.Reader
	}{{"app.wasm", int64(len(module)), bytes.NewReader(module)}, {"zeros", size, io.LimitReader(zeros{}, size)}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: f.size, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), digest.NewDigest(digest.SHA256, h)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
