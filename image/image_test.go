package image_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	. "github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testregistry"
	bolt "go.etcd.io/bbolt"
)

// A minimal valid core module: the header of an empty module.
var emptyModule = []byte("\x00asm\x01\x00\x00\x00")

// A module that is a component (version 0x0d, layer 1).
var componentModule = []byte("\x00asm\x0d\x00\x01\x00")

func newService(t testing.TB, dir string, opts Options) *Service {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := NewService(db, filepath.Join(dir, "content"), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func push(t testing.TB, ref string, b *imagebuild.Built) {
	t.Helper()
	if err := imagebuild.Push(context.Background(), ref, b, RegistryOptions{}, nil); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func mustCompat(t testing.TB, module []byte, opts imagebuild.CompatOptions) *imagebuild.Built {
	t.Helper()
	b, err := imagebuild.BuildCompat(module, opts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantErr(t testing.TB, err error, class error, substr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want %v containing %q", class, substr)
	}
	if !errors.Is(err, class) {
		t.Fatalf("error %q is not %v", err, class)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %q does not say %q", err, substr)
	}
}

func TestPullEachLayout(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	s := newService(t, t.TempDir(), Options{})
	module := append(append([]byte{}, emptyModule...), []byte("\x00\x04name")...) // a custom section

	linux := &imagebuild.Built{}
	cfg := linux.AddJSON(ocispec.MediaTypeImageConfig, ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}})
	layer := linux.Add(ocispec.MediaTypeImageLayerGzip, []byte("not really a layer"))
	linux.SetManifest(ocispec.MediaTypeImageManifest, cfg, []ocispec.Descriptor{layer}, nil)
	compat := mustCompat(t, module, imagebuild.CompatOptions{ModulePath: "/bin/app.wasm", Cmd: []string{"serve"}, Env: []string{"A=1"}, WorkingDir: "/srv"})

	for _, tc := range []struct {
		name     string
		image    *imagebuild.Built
		format   Format
		modName  string
		wantCmd  []string
		wantEntr []string
	}{
		{"artifact-v0-config-v1-layer", imagebuild.BuildArtifact(module, MediaTypeWasmConfigV0, MediaTypeWasmLayerV1), FormatArtifact, "artifact-v0-config-v1-layer", nil, nil},
		{"artifact-application-wasm", imagebuild.BuildArtifact(module, MediaTypeWasmConfigV0, MediaTypeWasmLayer), FormatArtifact, "artifact-application-wasm", nil, nil},
		{"artifact-v1-config", imagebuild.BuildArtifact(module, MediaTypeWasmConfigV1, MediaTypeWasmLayerV1), FormatArtifact, "artifact-v1-config", nil, nil},
		{"compat", compat, FormatCompat, "/bin/app.wasm", []string{"serve"}, []string{"/bin/app.wasm"}},
		{"compat-wasi", mustCompat(t, module, imagebuild.CompatOptions{OS: "wasi"}), FormatCompat, "/module.wasm", nil, []string{"/module.wasm"}},
		{"index", imagebuild.BuildIndex(
			imagebuild.IndexEntry{Image: linux, Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}},
			imagebuild.IndexEntry{Image: compat, Platform: ocispec.Platform{OS: "wasip1", Architecture: "wasm"}},
		), FormatCompat, "/bin/app.wasm", []string{"serve"}, []string{"/bin/app.wasm"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := reg + "/test/" + tc.name + ":v1"
			push(t, ref, tc.image)
			img, err := s.Pull(ctx, ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			if img.Format != tc.format {
				t.Errorf("format = %s, want %s", img.Format, tc.format)
			}
			if img.Module.Name != tc.modName {
				t.Errorf("module name = %q, want %q", img.Module.Name, tc.modName)
			}
			if strings.Join(img.Cmd, " ") != strings.Join(tc.wantCmd, " ") || strings.Join(img.Entrypoint, " ") != strings.Join(tc.wantEntr, " ") {
				t.Errorf("entrypoint/cmd = %q/%q", img.Entrypoint, img.Cmd)
			}
			// The index holds the compat image: one image, two names.
			if !slices.Contains(img.RepoTags, ref) {
				t.Errorf("repo tags = %v", img.RepoTags)
			}
			wantDigest := reg + "/test/" + tc.name + "@" + tc.image.Root.Digest.String()
			if !slices.Contains(img.RepoDigests, wantDigest) {
				t.Errorf("repo digests = %v, want %s", img.RepoDigests, wantDigest)
			}
			got, err := s.ReadModule(ctx, img)
			if err != nil || !bytes.Equal(got, module) {
				t.Fatalf("module read back = %q, %v", got, err)
			}
			// Every name of the image finds it.
			for _, name := range []string{ref, wantDigest, img.ID, strings.TrimPrefix(img.ID, "sha256:"), strings.TrimPrefix(img.ID, "sha256:")[:12]} {
				if g, err := s.Get(name); err != nil || g.ID != img.ID {
					t.Errorf("Get(%q) = %v, %v", name, g, err)
				}
			}
			// Pulling by digest gives the same image.
			byDigest, err := s.Pull(ctx, wantDigest, nil)
			if err != nil || byDigest.ID != img.ID {
				t.Fatalf("pull by digest: %v, %v", byDigest, err)
			}
		})
	}
	if env := mustGet(t, s, reg+"/test/compat:v1").Env; len(env) != 1 || env[0] != "A=1" {
		t.Errorf("compat env = %v", env)
	}
}

func mustGet(t testing.TB, s *Service, ref string) *Image {
	t.Helper()
	img, err := s.Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestPullRefusesWhatIsNotAWasmModule(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	s := newService(t, t.TempDir(), Options{MaxLayerSize: 1 << 10})

	linux := &imagebuild.Built{}
	cfg := linux.AddJSON(ocispec.MediaTypeImageConfig, ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}})
	layer := linux.Add(ocispec.MediaTypeImageLayerGzip, []byte("layer"))
	linux.SetManifest(ocispec.MediaTypeImageManifest, cfg, []ocispec.Descriptor{layer}, nil)
	push(t, reg+"/bad/linux:1", linux)
	push(t, reg+"/bad/linux-index:1", imagebuild.BuildIndex(imagebuild.IndexEntry{Image: linux, Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}}))
	push(t, reg+"/bad/component:1", imagebuild.BuildArtifact(componentModule, MediaTypeWasmConfigV0, MediaTypeWasmLayer))
	push(t, reg+"/bad/notwasm:1", imagebuild.BuildArtifact([]byte("#!/bin/sh\necho hi\n"), MediaTypeWasmConfigV0, MediaTypeWasmLayer))
	push(t, reg+"/bad/big:1", imagebuild.BuildArtifact(append(append([]byte{}, emptyModule...), make([]byte, 2<<10)...), MediaTypeWasmConfigV0, MediaTypeWasmLayer))
	push(t, reg+"/bad/noentry:1", mustCompat(t, emptyModule, imagebuild.CompatOptions{Entrypoint: []string{"/missing.wasm"}}))

	// A tar whose entry climbs out of the root.
	var tb bytes.Buffer
	gz := gzip.NewWriter(&tb)
	tw := tar.NewWriter(gz)
	tw.WriteHeader(&tar.Header{Name: "../../module.wasm", Mode: 0o644, Size: int64(len(emptyModule)), Typeflag: tar.TypeReg})
	tw.Write(emptyModule)
	tw.Close()
	gz.Close()
	push(t, reg+"/bad/traversal:1", imageOf(wasmConfig("/module.wasm", digest.FromBytes(gunzipOf(t, tb.Bytes()))), crafted{blob: tb.Bytes()}))

	for _, tc := range []struct {
		ref   string
		class error
		says  string
	}{
		{reg + "/bad/linux:1", errdefs.ErrInvalidArgument, "platform linux/amd64"},
		{reg + "/bad/linux-index:1", errdefs.ErrInvalidArgument, "holds linux/amd64"},
		{reg + "/bad/component:1", errdefs.ErrInvalidArgument, "components are not yet supported"},
		{reg + "/bad/notwasm:1", errdefs.ErrInvalidArgument, "not WebAssembly"},
		{reg + "/bad/big:1", errdefs.ErrInvalidArgument, "over the 1024-byte limit"},
		{reg + "/bad/noentry:1", errdefs.ErrInvalidArgument, "/missing.wasm"},
		{reg + "/bad/traversal:1", errdefs.ErrInvalidArgument, "climbs out of the image root"},
		{reg + "/bad/absent:1", errdefs.ErrNotFound, "not found"},
		{"bad:tag:twice", errdefs.ErrInvalidArgument, "bad:tag:twice"},
		{"127.0.0.1:1/nothing/listens:here", errdefs.ErrUnavailable, "unreachable"},
	} {
		t.Run(tc.says, func(t *testing.T) {
			_, err := s.Pull(ctx, tc.ref, nil)
			wantErr(t, err, tc.class, tc.says)
		})
	}
	if imgs, _ := s.List(); len(imgs) != 0 {
		t.Fatalf("refused pulls left images: %v", imgs)
	}
}

func TestPullWithBasicAuth(t *testing.T) {
	reg := testregistry.StartWithBasicAuth(t, "alice", "s3cret")
	ctx := context.Background()
	ref := reg + "/private/app:1"
	if err := imagebuild.Push(ctx, ref, imagebuild.BuildArtifact(emptyModule, MediaTypeWasmConfigV0, MediaTypeWasmLayer), RegistryOptions{}, &Auth{Username: "alice", Password: "s3cret"}); err != nil {
		t.Fatal(err)
	}
	s := newService(t, t.TempDir(), Options{})
	_, err := s.Pull(ctx, ref, nil)
	wantErr(t, err, errdefs.ErrUnauthenticated, "credentials")
	_, err = s.Pull(ctx, ref, &Auth{Username: "alice", Password: "wrong"})
	wantErr(t, err, errdefs.ErrUnauthenticated, "credentials")
	if _, err := s.Pull(ctx, ref, &Auth{Username: "alice", Password: "s3cret"}); err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
}

func TestRemoveFreesOnlyUnsharedContent(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	dir := t.TempDir()
	s := newService(t, dir, Options{})
	a := imagebuild.BuildArtifact(emptyModule, MediaTypeWasmConfigV0, MediaTypeWasmLayer)
	b := mustCompat(t, emptyModule, imagebuild.CompatOptions{})
	push(t, reg+"/x/a:1", a)
	push(t, reg+"/x/a:2", a)
	push(t, reg+"/x/b:1", b)
	imgA, err := s.Pull(ctx, reg+"/x/a:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx, reg+"/x/a:2", nil); err != nil {
		t.Fatal(err)
	}
	imgB, err := s.Pull(ctx, reg+"/x/b:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, reg+"/x/a:2"); len(got.RepoTags) != 2 {
		t.Fatalf("one image under two tags has tags %v", got.RepoTags)
	}
	// a and b share the module bytes (one blob): removing a keeps it for b.
	if imgA.Module.Digest != imgB.Module.Digest {
		t.Fatalf("test expects a shared module blob")
	}
	before, _ := s.Usage()
	if err := s.Remove(ctx, reg+"/x/a:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(reg + "/x/a:2"); !errdefs.IsNotFound(err) {
		t.Fatalf("RemoveImage left the image's other tag: %v", err)
	}
	after, _ := s.Usage()
	if after.Bytes >= before.Bytes {
		t.Errorf("usage %d -> %d: nothing freed", before.Bytes, after.Bytes)
	}
	if _, err := s.ReadModule(ctx, imgB); err != nil {
		t.Fatalf("shared module deleted with the other image: %v", err)
	}
	if err := s.Remove(ctx, reg+"/x/a:1"); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "content", "blobs", "sha256", imgA.ManifestDigest.Encoded())); !os.IsNotExist(err) {
		t.Errorf("manifest blob of removed image still on disk: %v", err)
	}
}

func TestMetadataSurvivesReopen(t *testing.T) {
	reg := testregistry.Start(t)
	dir := t.TempDir()
	push(t, reg+"/x/a:1", imagebuild.BuildArtifact(emptyModule, MediaTypeWasmConfigV0, MediaTypeWasmLayer))
	db, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := NewService(db, filepath.Join(dir, "content"), Options{})
	img, err := s.Pull(context.Background(), reg+"/x/a:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	s2 := newService(t, dir, Options{})
	got := mustGet(t, s2, reg+"/x/a:1")
	if got.ID != img.ID || got.Module.Digest != img.Module.Digest {
		t.Fatalf("after reopen: %+v", got)
	}
}

func TestParseReference(t *testing.T) {
	for in, want := range map[string]string{
		"hello":                     "docker.io/library/hello:latest",
		"user/app:1":                "docker.io/user/app:1",
		"127.0.0.1:5000/app":        "127.0.0.1:5000/app:latest",
		"registry.k8s.io/pause:3.9": "registry.k8s.io/pause:3.9",
		"hello@sha256:" + strings.Repeat("a", 64): "docker.io/library/hello@sha256:" + strings.Repeat("a", 64),
	} {
		got, err := ParseReference(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseReference(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "Hello", "a b", "x@sha256:short"} {
		if _, err := ParseReference(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("ParseReference(%q) = %v, want invalid argument", bad, err)
		}
	}
}

// Concurrent pulls of one image download each blob once.
func TestConcurrentPullsDownloadOnce(t *testing.T) {
	var mu sync.Mutex
	gets := map[string]int{}
	reg := testregistry.StartWithHook(t, func(r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			mu.Lock()
			gets[r.URL.Path]++
			mu.Unlock()
		}
	})
	ref := reg + "/x/a:1"
	push(t, ref, imagebuild.BuildArtifact(append(append([]byte{}, emptyModule...), make([]byte, 1<<20)...), MediaTypeWasmConfigV0, MediaTypeWasmLayer))
	s := newService(t, t.TempDir(), Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Pull(context.Background(), ref, nil)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for path, n := range gets {
		if n != 1 {
			t.Errorf("%s fetched %d times by 8 concurrent pulls", path, n)
		}
	}
	if len(gets) == 0 {
		t.Fatal("no blob fetched at all")
	}
}

// An import checks what it is given as a pull does.
func TestImport(t *testing.T) {
	s := newService(t, t.TempDir(), Options{})
	ctx := context.Background()
	var buf bytes.Buffer
	if err := imagebuild.LayoutOf(imagebuild.BuildArtifact(emptyModule, MediaTypeWasmConfigV0, MediaTypeWasmLayer), "local/app:1").WriteTar(&buf); err != nil {
		t.Fatal(err)
	}
	layout, err := ReadLayoutTar(&buf, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Import(ctx, "local/app:1", layout)
	if err != nil || len(img.RepoTags) != 1 || img.RepoTags[0] != "docker.io/local/app:1" {
		t.Fatalf("import: %+v, %v", img, err)
	}

	// Tampered blobs, escaping paths and non-Wasm content are refused.
	tamper := func(edit func(*Layout)) error {
		l := imagebuild.LayoutOf(imagebuild.BuildArtifact(emptyModule, MediaTypeWasmConfigV0, MediaTypeWasmLayer), "x")
		edit(l)
		var b bytes.Buffer
		l.WriteTar(&b)
		l2, err := ReadLayoutTar(&b, 1<<20)
		if err != nil {
			return err
		}
		_, err = s.Import(ctx, "local/bad:1", l2)
		return err
	}
	if err := tamper(func(l *Layout) {
		for d := range l.Blobs {
			l.Blobs[d] = []byte("changed")
			break
		}
	}); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("tampered blob: %v", err)
	}
	var evil bytes.Buffer
	tw := tar.NewWriter(&evil)
	tw.WriteHeader(&tar.Header{Name: "../../etc/cron.d/x", Size: 1, Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Write([]byte("x"))
	tw.Close()
	if _, err := ReadLayoutTar(&evil, 1<<20); !errdefs.IsInvalidArgument(err) {
		t.Errorf("layout entry outside the layout: %v", err)
	}
	if _, err := ReadLayoutTar(strings.NewReader("not a tar"), 1<<20); !errdefs.IsInvalidArgument(err) {
		t.Errorf("garbage: %v", err)
	}
	var notWasm bytes.Buffer
	imagebuild.LayoutOf(imagebuild.BuildArtifact([]byte("#!/bin/sh\n"), MediaTypeWasmConfigV0, MediaTypeWasmLayer), "x").WriteTar(&notWasm)
	l, _ := ReadLayoutTar(&notWasm, 1<<20)
	if _, err := s.Import(ctx, "local/sh:1", l); !errdefs.IsInvalidArgument(err) {
		t.Errorf("import of a shell script: %v", err)
	}
	if imgs, _ := s.List(); len(imgs) != 1 {
		t.Errorf("refused imports left images: %d", len(imgs))
	}
}

// One image through two manifests (its layer gzipped, and not): one ID,
// one unpacked tree, both manifests' blobs counted and freed with it; the
// second pull only checks its layer against the diff ID.
func TestSameImageThroughAnotherManifest(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	plain := tarOf(t, file("app.wasm", moduleNamed("same")), file("etc/motd", []byte("hi")))
	cfg := wasmConfig("/app.wasm", digest.FromBytes(plain))
	zipped := imageOf(cfg, crafted{blob: gzipOf(t, plain)})
	raw := &imagebuild.Built{}
	l := raw.Add(ocispec.MediaTypeImageLayer, plain)
	raw.SetManifest(ocispec.MediaTypeImageManifest, raw.AddJSON(ocispec.MediaTypeImageConfig, cfg), []ocispec.Descriptor{l}, nil)
	push(t, reg+"/same/zipped:1", zipped)
	push(t, reg+"/same/raw:1", raw)
	s := newService(t, t.TempDir(), Options{})
	first, err := s.Pull(ctx, reg+"/same/zipped:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := s.FSPath(first.ID)
	fi, _ := os.Stat(dir)
	again, err := s.Pull(ctx, reg+"/same/zipped:1", nil)
	if err != nil || again.Size != first.Size || len(again.Blobs) != len(first.Blobs) {
		t.Fatalf("pulled again: %+v, %v", again, err)
	}
	second, err := s.Pull(ctx, reg+"/same/raw:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if second.ID != first.ID || second.Module != first.Module || *second.Unpacked != *first.Unpacked || len(second.RepoTags) != 2 {
		t.Fatalf("second manifest: %+v\nfirst: %+v", second, first)
	}
	if want := first.Size + int64(len(plain)) + int64(len(raw.Blobs[raw.Root.Digest])); second.Size != want {
		t.Fatalf("size %d, want %d: the first's and the second manifest and layer", second.Size, want)
	}
	if fi2, _ := os.Stat(dir); !os.SameFile(fi, fi2) {
		t.Fatal("the tree was unpacked again")
	}
	if err := s.Remove(ctx, second.ID); err != nil {
		t.Fatal(err)
	}
	for _, d := range second.Blobs {
		if _, err := s.Content().Info(ctx, d); !errdefs.IsNotFound(err) {
			t.Errorf("blob %s kept after the remove: %v", d, err)
		}
	}
}
