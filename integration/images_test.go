package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

func (d *daemon) imageFsUsed() uint64 {
	d.t.Helper()
	var out struct {
		Status struct {
			ImageFilesystems []struct {
				UsedBytes struct{ Value string } `json:"usedBytes"`
			} `json:"imageFilesystems"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(d.must("imagefsinfo")), &out); err != nil {
		d.t.Fatal(err)
	}
	n, _ := strconv.ParseUint(out.Status.ImageFilesystems[0].UsedBytes.Value, 10, 64)
	return n
}

// What kubelet's image GC and `crictl images --digests` rely on: sizes, tags
// and digests; RemoveImage by tag, ID or digest frees the content.
func TestImageHousekeeping(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	hello := testmodule.Hello(t)
	a, b := reg+"/house/a:v1", reg+"/house/b:v1"
	pushWasm(t, hello, a, "oci")
	pushWasm(t, hello, b, "oci") // the same image under a second name
	empty := d.imageFsUsed()

	for _, remove := range []string{"tag", "id", "digest"} {
		t.Run("by "+remove, func(t *testing.T) {
			d.must("pull", a)
			d.must("pull", b)
			var img struct {
				Status struct {
					ID          string   `json:"id"`
					RepoTags    []string `json:"repoTags"`
					RepoDigests []string `json:"repoDigests"`
					Size        string   `json:"size"`
				} `json:"status"`
			}
			json.Unmarshal([]byte(d.must("inspecti", a)), &img)
			if len(img.Status.RepoTags) != 2 || len(img.Status.RepoDigests) != 2 {
				t.Fatalf("one image under two names: %+v", img.Status)
			}
			if size, _ := strconv.Atoi(img.Status.Size); size < len(hello) {
				t.Errorf("size %s is less than the module's %d bytes", img.Status.Size, len(hello))
			}
			digest := strings.SplitN(img.Status.RepoDigests[0], "@", 2)[1]
			if out := d.must("images", "--digests"); !strings.Contains(out, strings.TrimPrefix(digest, "sha256:")[:13]) {
				t.Errorf("crictl images --digests lacks %s:\n%s", digest, out)
			}
			if used := d.imageFsUsed(); used < empty+uint64(len(hello)) {
				t.Errorf("image filesystem grew from %d to %d bytes for a %d-byte module", empty, used, len(hello))
			}
			target := map[string]string{"tag": b, "id": img.Status.ID, "digest": img.Status.RepoDigests[0]}[remove]
			d.must("rmi", target)
			if out, err := d.run("inspecti", a); err == nil && strings.Contains(out, img.Status.ID) {
				t.Fatalf("image still there after rmi by %s", remove)
			}
			if used := d.imageFsUsed(); used > empty+4096 {
				t.Errorf("after rmi by %s the image filesystem holds %d bytes, %d before the pull", remove, used, empty)
			}
		})
	}
}

// wasmcri image import loads a .wasm file, an OCI layout directory or an
// OCI layout tarball into the node's store, with no registry.
func TestImageImport(t *testing.T) {
	d := newDaemon(t)
	hello := testmodule.Hello(t)
	dir := t.TempDir()
	wasmFile := filepath.Join(dir, "hello.wasm")
	os.WriteFile(wasmFile, hello, 0o644)

	var tarBuf bytes.Buffer
	imagebuild.LayoutOf(imagebuild.BuildArtifact(hello, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer), "layout-tar").WriteTar(&tarBuf)
	var gzBuf bytes.Buffer
	gz := gzip.NewWriter(&gzBuf)
	gz.Write(tarBuf.Bytes())
	gz.Close()
	tarball := filepath.Join(dir, "layout.tar.gz")
	os.WriteFile(tarball, gzBuf.Bytes(), 0o644)
	layoutDir := filepath.Join(dir, "layout")
	untar(t, tarBuf.Bytes(), layoutDir)

	for _, tc := range []struct {
		name, file, ref, argv0 string
		args                   []string
	}{
		{"wasm-oci", wasmFile, "local/hello:oci", "hello", nil},
		{"wasm-compat", wasmFile, "local/hello:compat", "/hello.wasm", []string{"--format", "compat"}},
		{"layout-dir", layoutDir, "local/from-dir:v1", "from-dir", nil},
		{"layout-tarball", tarball, "local/from-tar:v1", "from-tar", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"image", "import", "--address", d.adminSocket()}, tc.args...)
			out, err := exec.Command(wasmcriBin, append(args, tc.file, tc.ref)...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "imported") {
				t.Fatalf("import: %v\n%s", err, out)
			}
			full := "docker.io/" + tc.ref
			pod := strings.TrimSpace(d.must("runp", podJSON(t, "imp-"+tc.name)))
			ctr := strings.TrimSpace(d.must("create", pod, containerJSON(t, "app", full, []string{"imported"}, nil), podJSON(t, "imp-"+tc.name)))
			d.must("start", ctr)
			d.waitState(ctr, "CONTAINER_EXITED", 20*time.Second)
			if logs := d.must("logs", ctr); !strings.Contains(logs, `args: ["`+tc.argv0+`" "imported"]`) {
				t.Errorf("imported image ran as:\n%s", logs)
			}
		})
	}
	bad := filepath.Join(dir, "bad.tar")
	os.WriteFile(bad, []byte("not a tar at all"), 0o644)
	out, err := exec.Command(wasmcriBin, "image", "import", "--address", d.adminSocket(), bad, "local/bad:v1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not a readable tar") {
		t.Errorf("import of garbage: %v\n%s", err, out)
	}
}

func untar(t *testing.T, data []byte, dir string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, hdr.Name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		b, _ := io.ReadAll(tr)
		os.WriteFile(p, b, 0o644)
	}
}

// A daemon killed in the middle of a pull keeps no image, corrupt or not,
// and pulls it whole afterwards.
func TestCrashMidPull(t *testing.T) {
	reg := startRegistry(t)
	module := testmodule.Hello(t)
	ref := "/crash/big:v1"
	pushWasm(t, testmodule.WithCustomSection(module, "pad", make([]byte, 6<<20)), reg+ref, "oci")

	// A proxy that trickles blobs while slow is set.
	var slow atomic.Bool
	var served atomic.Int64
	slow.Store(true)
	target, _ := url.Parse("http://" + reg)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if strings.Contains(resp.Request.URL.Path, "/blobs/") && slow.Load() {
			resp.Body = &trickle{r: resp.Body, served: &served}
		}
		return nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: proxy}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	via := l.Addr().String() + ref

	d := newDaemon(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pull := d.crictlCmd(ctx, "pull", via)
	pull.Start()
	waitFor(t, "download under way", 30*time.Second, func() bool { return served.Load() > 1<<20 })
	d.stop(syscall.SIGKILL)
	cancel()
	pull.Wait()

	slow.Store(false)
	d.start()
	if out := d.must("images"); strings.Contains(out, "crash/big") {
		t.Fatalf("a half-pulled image is listed after the crash:\n%s", out)
	}
	d.must("pull", via)
	pod := strings.TrimSpace(d.must("runp", podJSON(t, "after-crash")))
	ctr := strings.TrimSpace(d.must("create", pod, containerJSON(t, "app", via, nil, nil), podJSON(t, "after-crash")))
	d.must("start", ctr)
	if st := d.waitState(ctr, "CONTAINER_EXITED", 20*time.Second); st["exitCode"] != float64(0) {
		t.Errorf("image pulled after the crash: exit %v", st["exitCode"])
	}
}

// trickle reads 32 KiB every 20ms.
type trickle struct {
	r      io.ReadCloser
	served *atomic.Int64
}

func (t *trickle) Read(p []byte) (int, error) {
	time.Sleep(20 * time.Millisecond) // the slow registry itself, not a wait in the test
	n, err := t.r.Read(p[:min(len(p), 32<<10)])
	t.served.Add(int64(n))
	return n, err
}

func (t *trickle) Close() error { return t.r.Close() }
