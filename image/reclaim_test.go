package image_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	. "github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testregistry"
	bolt "go.etcd.io/bbolt"
)

// openService opens the service in dir and returns it with a func that
// closes it, as a daemon stopping (or crashing: nothing more is done).
func openService(t *testing.T, dir string, opts Options) (*Service, func()) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewService(db, filepath.Join(dir, "content"), opts)
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	return s, func() { db.Close() }
}

// A crash leaves a half-unpacked tree, a tree no record names, an
// interrupted download and a blob fetched for an image never recorded;
// an older wasmcri leaves a tree its record does not say was checked.
// Opening the service again reclaims all of them and keeps every image.
func TestReclaimAtStartup(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	dir := t.TempDir()
	push(t, reg+"/ok/kept:1", compatOf("/app.wasm", gzLayer(t, file("app.wasm", moduleNamed("kept")), file("etc/motd", []byte("hi")))))
	push(t, reg+"/ok/old:1", compatOf("/app.wasm", gzLayer(t, file("app.wasm", moduleNamed("old")))))
	push(t, reg+"/ok/artifact:1", imagebuild.BuildArtifact(moduleNamed("artifact"), MediaTypeWasmConfigV0, MediaTypeWasmLayer))

	s, stop := openService(t, dir, Options{})
	kept, err := s.Pull(ctx, reg+"/ok/kept:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	old, err := s.Pull(ctx, reg+"/ok/old:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	artifact, err := s.Pull(ctx, reg+"/ok/artifact:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	artifactDir, err := s.Filesystem(ctx, artifact)
	if err != nil {
		t.Fatal(err)
	}
	keptDir, _ := s.FSPath(kept.ID)
	oldDir, _ := s.FSPath(old.ID)
	edit(t, s, old.ID, func(img *Image) { img.Size -= img.Unpacked.Bytes; img.Unpacked = nil })

	// The leftovers.
	half := filepath.Join(s.FSDir(), TempPrefix+"123456")
	stray := filepath.Join(s.FSDir(), strings.Repeat("ab", 32))
	for _, d := range []string{filepath.Join(half, "usr", "lib"), filepath.Join(stray, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "f"), []byte("left"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A directory its own owner cannot enter does not stop the reclaim.
	if err := os.Chmod(filepath.Join(half, "usr"), 0); err != nil {
		t.Fatal(err)
	}
	w, err := content.OpenWriter(ctx, s.Content(), content.WithRef("interrupted"), content.WithDescriptor(ocispec.Descriptor{Size: 1 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("the first bytes of a layer")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	orphan := []byte("fetched, never recorded")
	if err := content.WriteBlob(ctx, s.Content(), "orphan", strings.NewReader(string(orphan)), ocispec.Descriptor{Digest: digest.FromBytes(orphan), Size: int64(len(orphan))}); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Content().ListStatuses(ctx); len(st) != 1 {
		t.Fatalf("test expects one ingest, has %v", st)
	}
	stop()

	s, stop = openService(t, dir, Options{})
	defer stop()
	// A tree of no recorded image stays until the holds are known.
	if _, err := os.Stat(stray); err != nil {
		t.Errorf("a tree of no recorded image went before CollectFilesystems: %v", err)
	}
	if n, err := s.CollectFilesystems(ctx); n != 1 || err != nil {
		t.Errorf("CollectFilesystems: %d, %v; want the stray tree", n, err)
	}
	for _, gone := range []string{half, stray, oldDir} {
		if _, err := os.Lstat(gone); !os.IsNotExist(err) {
			t.Errorf("%s is still there: %v", gone, err)
		}
	}
	if st, err := s.Content().ListStatuses(ctx); err != nil || len(st) != 0 {
		t.Errorf("ingests after start-up: %v, %v", st, err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "content", "ingest")); len(entries) != 0 {
		t.Errorf("ingest directory holds %v", entries)
	}
	if _, err := s.Content().Info(ctx, digest.FromBytes(orphan)); !errdefs.IsNotFound(err) {
		t.Errorf("the orphan blob is still there: %v", err)
	}
	for _, d := range []string{keptDir, artifactDir} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("an image's files went: %v", err)
		}
	}
	for _, img := range []*Image{kept, old, artifact} {
		got := mustGet(t, s, img.ID)
		for _, d := range got.Blobs {
			if _, err := s.Content().Info(ctx, d); err != nil {
				t.Errorf("blob %s of %s went: %v", d, img.RepoTags, err)
			}
		}
		if _, err := s.ReadModule(ctx, got); err != nil {
			t.Errorf("%s: %v", img.RepoTags, err)
		}
	}
	// The old tree comes back, checked, when asked for.
	if d, err := s.Filesystem(ctx, mustGet(t, s, old.ID)); err != nil || d != oldDir {
		t.Fatalf("old image's files: %s, %v", d, err)
	}
	if got := mustGet(t, s, old.ID); got.Unpacked == nil || got.Size != old.Size {
		t.Fatalf("old image after unpacking: %+v", got)
	}
}

// The content store and the unpacked images are the daemon's alone,
// however they were made before.
func TestStoreDirectoriesArePrivate(t *testing.T) {
	reg := testregistry.Start(t)
	dir := t.TempDir()
	for _, d := range []string{"content", "image-fs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	push(t, reg+"/ok/app:1", compatOf("/app.wasm", gzLayer(t, file("app.wasm", emptyModule), file("etc/motd", []byte("hi")))))
	var logs bytes.Buffer
	s, stop := openService(t, dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	defer stop()
	if logs.Len() != 0 {
		t.Errorf("a fresh store logged at start-up: %s", logs.String())
	}
	img, err := s.Pull(context.Background(), reg+"/ok/app:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"content", "image-fs"} {
		fi, err := os.Stat(filepath.Join(dir, d))
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want 0700", d, fi.Mode(), err)
		}
	}
	tree, _ := s.FSPath(img.ID)
	if fi, err := os.Stat(filepath.Join(tree, "etc", "motd")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("an unpacked file's own mode: %v %v", fi.Mode(), err)
	}
}

// A refused image's blobs are freed at once, but those another image
// holds.
func TestRefusedPullFreesItsBlobs(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	shared := gzLayer(t, file("app.wasm", emptyModule))
	hostile := gzLayer(t, whiteout(".wh..."))
	push(t, reg+"/ok/good:1", compatOf("/app.wasm", shared))
	bad := compatOf("/app.wasm", shared, hostile)
	push(t, reg+"/bad/whiteout:1", bad)
	s := newService(t, t.TempDir(), Options{})
	good, err := s.Pull(ctx, reg+"/ok/good:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Pull(ctx, reg+"/bad/whiteout:1", nil)
	wantErr(t, err, errdefs.ErrInvalidArgument, "not a name in its directory")
	for d := range bad.Blobs {
		_, err := s.Content().Info(ctx, d)
		if slices.Contains(good.Blobs, d) {
			if err != nil {
				t.Errorf("blob %s of the recorded image went: %v", d, err)
			}
		} else if !errdefs.IsNotFound(err) {
			t.Errorf("blob %s of the refused image kept: %v", d, err)
		}
	}
}
