package image_test

import (
	"bytes"
	"context"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	. "github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testregistry"
)

// edit changes image id's record in place, as a record written by an
// older wasmcri (or a crash) would have it.
func edit(t testing.TB, s *Service, id string, f func(*Image)) {
	t.Helper()
	if err := s.EditRecord(id, f); err != nil {
		t.Fatal(err)
	}
}

// Files missing, or never unpacked (an artifact; a compat image recorded
// before unpacking moved to pull time), are unpacked when first asked for,
// with the same checks: the files must hold the module the image runs.
func TestFilesystemUnpacksLazily(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	module := moduleNamed("lazy")
	push(t, reg+"/ok/compat:1", compatOf("/app.wasm", gzLayer(t, file("app.wasm", module), file("etc/motd", []byte("hi")))))
	push(t, reg+"/ok/artifact:1", imagebuild.BuildArtifact(module, MediaTypeWasmConfigV0, MediaTypeWasmLayer))
	s := newService(t, t.TempDir(), Options{})
	compat, err := s.Pull(ctx, reg+"/ok/compat:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := s.FSPath(compat.ID)
	want := treeOf(t, dir)

	// Gone: unpacked again, counted once.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Filesystem(ctx, compat); err != nil || got != dir || !maps.Equal(treeOf(t, dir), want) {
		t.Fatalf("after the files went: %s, %v", got, err)
	}
	if again := mustGet(t, s, compat.ID); again.Size != compat.Size {
		t.Fatalf("size %d -> %d unpacking again", compat.Size, again.Size)
	}

	// Recorded before unpacking at pull: unpacked and counted now.
	os.RemoveAll(dir)
	edit(t, s, compat.ID, func(img *Image) { img.Size -= img.Unpacked.Bytes; img.Unpacked = nil })
	if _, err := s.Filesystem(ctx, mustGet(t, s, compat.ID)); err != nil || !maps.Equal(treeOf(t, dir), want) {
		t.Fatalf("old record: %v", err)
	}
	if again := mustGet(t, s, compat.ID); again.Size != compat.Size || *again.Unpacked != *compat.Unpacked {
		t.Fatalf("old record unpacked: %+v, want %+v", again, compat)
	}

	// A record whose module is not what its layers hold is not unpacked.
	os.RemoveAll(dir)
	edit(t, s, compat.ID, func(img *Image) { img.Module.Digest = digest.FromBytes(moduleNamed("other")); img.Unpacked = nil })
	_, err = s.Filesystem(ctx, mustGet(t, s, compat.ID))
	wantErr(t, err, errdefs.ErrFailedPrecondition, "not the "+digest.FromBytes(moduleNamed("other")).String())
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("refused files were left: %v", err)
	}
	leftovers(t, s)

	artifact, err := s.Pull(ctx, reg+"/ok/artifact:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if artifact.Unpacked != nil {
		t.Fatalf("artifact unpacked at pull: %+v", artifact.Unpacked)
	}
	before, _ := s.Usage()
	adir, err := s.Filesystem(ctx, artifact)
	if err != nil {
		t.Fatal(err)
	}
	if got := treeOf(t, adir); !maps.Equal(got, map[string]string{".": "dir", "artifact.wasm": string(module)}) {
		t.Fatalf("artifact files: %v", got)
	}
	after, _ := s.Usage()
	if a := mustGet(t, s, artifact.ID); a.Size != artifact.Size+int64(len(module)) || int64(after.Bytes-before.Bytes) != int64(len(module)) {
		t.Fatalf("artifact size %d -> %d, usage %d -> %d", artifact.Size, a.Size, before.Bytes, after.Bytes)
	}
}

// A compat image's unpacked files count in its Size and in Usage, hard
// links once, and go with it.
func TestUnpackedBytesCount(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	module := moduleNamed("sized")
	data := bytes.Repeat([]byte("0123456789abcdef"), 100<<10/16)
	img := compatOf("/app.wasm", gzLayer(t,
		file("app.wasm", module), dir("etc"), file("etc/data", data),
		hardlink("etc/again", "etc/data"), symlink("link", "app.wasm"),
	))
	push(t, reg+"/ok/sized:1", img)
	s := newService(t, t.TempDir(), Options{})
	before, err := s.Usage()
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Pull(ctx, reg+"/ok/sized:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := s.Usage()
	var blobs int64
	for _, b := range img.Blobs {
		blobs += int64(len(b))
	}
	blobs += int64(len(module)) // the module, stored on its own
	files := int64(len(module) + len(data))
	if got.Unpacked == nil || got.Unpacked.Bytes != files || got.Unpacked.Inodes != 5 {
		t.Fatalf("unpacked = %+v, want %d bytes in 5 inodes (/, app.wasm, etc, etc/data twice linked, link)", got.Unpacked, files)
	}
	if got.Size != blobs+files {
		t.Fatalf("size = %d, want %d of blobs and %d of files", got.Size, blobs, files)
	}
	if grew := int64(after.Bytes - before.Bytes); grew != got.Size {
		t.Fatalf("usage grew %d bytes, the image is %d", grew, got.Size)
	}
	if after.Inodes < before.Inodes+uint64(got.Unpacked.Inodes) {
		t.Fatalf("usage inodes %d -> %d", before.Inodes, after.Inodes)
	}
	if err := s.Remove(ctx, got.ID); err != nil {
		t.Fatal(err)
	}
	if gone, _ := s.Usage(); gone.Bytes != before.Bytes {
		t.Fatalf("usage after remove = %d bytes, was %d before the pull", gone.Bytes, before.Bytes)
	}
	if entries, _ := os.ReadDir(s.FSDir()); len(entries) != 0 {
		t.Fatalf("image-fs holds %v after the remove", entries)
	}
}

// A held image's files outlive its removal until the last hold ends, and a
// hold taken after the removal finds nothing.
func TestHeldFilesystemOutlivesItsImage(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	push(t, reg+"/ok/held:1", compatOf("/app.wasm", gzLayer(t, file("app.wasm", emptyModule), file("etc/motd", []byte("hi")))))
	s, stop := openService(t, t.TempDir(), Options{})
	defer stop()
	img, err := s.Pull(ctx, reg+"/ok/held:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := s.HoldFilesystem(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.HoldFilesystem(ctx, img); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, img.ID); err != nil {
		t.Fatal(err)
	}
	motd := filepath.Join(dir, "etc", "motd")
	if _, err := os.Stat(motd); err != nil {
		t.Fatalf("the held files went with the image: %v", err)
	}
	if n, err := s.CollectFilesystems(ctx); n != 0 || err != nil {
		t.Fatalf("CollectFilesystems took a held tree: %d, %v", n, err)
	}
	s.ReleaseFilesystem(img.ID)
	if _, err := os.Stat(motd); err != nil {
		t.Fatalf("the files went with the first of two holds: %v", err)
	}
	s.ReleaseFilesystem(img.ID)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the files of a removed image outlived their last hold: %v", err)
	}
	if _, err := s.HoldFilesystem(ctx, img); !errdefs.IsNotFound(err) {
		t.Fatalf("a hold of a removed image: %v, want NotFound", err)
	}
}
