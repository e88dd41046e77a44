package image_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	. "github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/inroot"
)

// Limits the fuzz targets hold unpacking to.
const fuzzMaxBytes, fuzzMaxEntries = 1 << 20, 256

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// seedLayers are real layers: what imagebuild.BuildCompat writes, and hostile ones,
// gzipped (short inputs minimize fast) and one plain.
func seedLayers(t testing.TB) [][]byte {
	compat := mustCompat(t, emptyModule, imagebuild.CompatOptions{ModulePath: "/bin/app.wasm", Files: []imagebuild.TarEntry{
		{Name: "/etc/motd", Data: []byte("hi")}, {Name: "/bin/app", Link: "app.wasm"}, {Name: "/lib", Link: "/usr/lib"},
	}})
	out := [][]byte{compat.Blobs[manifestOf(compat).Layers[0].Digest]}
	for i, text := range entrySeeds {
		plain := tarOf(t, parseEntries(text)[0]...)
		if i == 0 {
			out = append(out, plain)
		}
		out = append(out, gzipOf(t, plain))
	}
	return out
}

// entrySeeds are layers as FuzzApplyEntries reads them: a line an entry,
// "<type> <name> [<target or data>]" with type f (file), d (directory),
// l (symlink), h (hard link); whiteouts are files named so; "--" starts
// the next layer.
var entrySeeds = []string{
	"f app.wasm \x00asm\x01\x00\x00\x00\nd dir\nf dir/file x\nh dir/again dir/file",
	"d dir\nf dir/file x\n--\nf .wh..\nf .wh...\nf dir/.wh..\nf dir/.wh.file\nf dir/.wh..wh..opq",
	"l out /\nf out/.wh.secret\nf out/new x\nh h out/secret",
	"l up ../..\nd up/made\nl s ../canary/secret\nh h s\nf s replaced",
	"f was\n--\nd was\nf was/x\n--\nl was /\nf was file",
	"d data\nf data/a\n--\nf data/c\nf data/.wh..wh..opq\nf data/d",
	"f ../climb\nh h ../../canary/secret\nf abs/x\nf deep/up/x\nd secret",
}

// parseEntries reads layers in entrySeeds' form.
func parseEntries(text string) [][]entry {
	layers := [][]entry{nil}
	for _, line := range strings.Split(text, "\n") {
		if line == "--" {
			layers = append(layers, nil)
			continue
		}
		parts := strings.SplitN(line, " ", 3)
		if len(parts) < 2 {
			continue
		}
		arg := ""
		if len(parts) == 3 {
			arg = parts[2]
		}
		var e entry
		switch parts[0] {
		case "f":
			e = file(parts[1], []byte(arg))
		case "d":
			e = dir(parts[1])
		case "l":
			e = symlink(parts[1], arg)
		case "h":
			e = hardlink(parts[1], arg)
		default:
			continue
		}
		layers[len(layers)-1] = append(layers[len(layers)-1], e)
	}
	return layers
}

// fuzzTempDir is a directory for one fuzz input, on tmpfs when there is
// one: fuzzing (and minimizing) runs an input thousands of times, and a
// file costs microseconds there, half a millisecond on some disks.
func fuzzTempDir(t *testing.T) string {
	base := ""
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "wasmcri-fuzz-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// memBlobs serves layers from memory, as the content store would.
type memBlobs map[digest.Digest][]byte

func (m memBlobs) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	b, ok := m[desc.Digest]
	if !ok {
		return nil, errdefs.ErrNotFound
	}
	return memReaderAt{bytes.NewReader(b)}, nil
}

type memReaderAt struct{ *bytes.Reader }

func (memReaderAt) Close() error { return nil }

// hostileRoot makes a tree to unpack into, already holding links out of
// it, beside a canary.
func hostileRoot(t *testing.T) (*inroot.Root, canary, string) {
	top := fuzzTempDir(t)
	c := plantCanary(t, filepath.Join(top, "canary"))
	root := filepath.Join(top, "root")
	if err := os.MkdirAll(filepath.Join(root, "deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"abs": string(c), "up": "../canary", "deep/up": "../../../..", "secret": filepath.Join(string(c), "secret")} {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	tree, err := inroot.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tree.Close() })
	return tree, c, top
}

// diffIDOf is the digest of what layer uncompresses to, read no further
// than a bound: a fuzzed layer passes its diff ID check unless it is
// bigger than what it may unpack to anyway.
func diffIDOf(layer []byte) digest.Digest {
	var r io.Reader = bytes.NewReader(layer)
	if bytes.HasPrefix(layer, []byte{0x1f, 0x8b}) {
		if gz, err := gzip.NewReader(r); err == nil {
			r = gz
		}
	}
	d := digest.Canonical.Digester()
	io.Copy(d.Hash(), io.LimitReader(r, 2*fuzzMaxBytes))
	return d.Digest()
}

// unpackChecked applies layers to a tree holding links out of it, beside
// a canary, and checks that nothing beside the tree changed and that the
// tree holds no more than the limits allow.
func unpackChecked(t *testing.T, layers [][]byte) {
	ctx := context.Background()
	tree, c, top := hostileRoot(t)
	cs := memBlobs{}
	b := NewBudget(fuzzMaxBytes, fuzzMaxEntries)
	for _, layer := range layers {
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(layer), Size: int64(len(layer))}
		cs[desc.Digest] = layer
		if err := ApplyLayer(ctx, cs, desc, diffIDOf(layer), tree, b); err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("refused with an error of another class: %v", err)
			}
			break
		}
	}
	c.check(t)
	// Nor linked to it from inside the tree.
	if fi, err := os.Stat(filepath.Join(string(c), "secret")); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
		t.Fatalf("the canary file: %v, %v", fi, err)
	}
	if entries, _ := os.ReadDir(top); len(entries) != 2 {
		t.Fatalf("beside the tree: %v", entries)
	}
	st, err := StatTree(tree.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st.Bytes > fuzzMaxBytes || st.Inodes > fuzzMaxEntries+6 {
		t.Fatalf("unpacked %d bytes in %d inodes, over the limits", st.Bytes, st.Inodes)
	}
}

// FuzzUnpackLayers applies two fuzzed layers (tar or tar+gzip bytes,
// whiteouts and links as they come) to a tree holding links out of it: it
// never panics, never touches the canary beside the tree or leaves
// anything beside it, and never unpacks past the limits.
func FuzzUnpackLayers(f *testing.F) {
	seeds := seedLayers(f)
	for i, a := range seeds {
		f.Add(a, seeds[(i+1)%len(seeds)])
	}
	f.Fuzz(func(t *testing.T, lower, upper []byte) {
		unpackChecked(t, [][]byte{lower, upper})
	})
}

// FuzzApplyEntries is FuzzUnpackLayers with the layers' entries fuzzed
// rather than their bytes (see entrySeeds): the fuzzer explores names,
// links and whiteouts and their order, not the tar format.
func FuzzApplyEntries(f *testing.F) {
	for _, s := range entrySeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		var layers [][]byte
		for _, entries := range parseEntries(text) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, e := range entries {
				hdr := e.hdr
				if tw.WriteHeader(&hdr) == nil {
					tw.Write(e.data)
				}
			}
			tw.Close()
			layers = append(layers, buf.Bytes())
		}
		unpackChecked(t, layers)
	})
}

// FuzzManifest decodes a fuzzed index, manifest and config as a pull does
// and classifies them: no panic, and what is accepted is what wasmcri can
// run. The seeds are what imagebuild.BuildCompat, imagebuild.BuildArtifact and imagebuild.BuildIndex write,
// cut to what classify reads (short inputs minimize fast).
func FuzzManifest(f *testing.F) {
	h := digest.FromString("x").String()
	index := `{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + h + `","size":9,"platform":{"architecture":"amd64","os":"linux"}},{"digest":"` + h + `","platform":{"architecture":"wasm","os":"wasip1"}}]}`
	compat := `{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + h + `"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}]}`
	config := `{"architecture":"wasm","os":"wasip1","config":{"Entrypoint":["/app.wasm"]},"rootfs":{"type":"layers","diff_ids":["` + h + `"]}}`
	docker := `{"config":{"mediaType":"application/vnd.docker.container.image.v1+json"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar"},{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip"}]}`
	artifact := `{"config":{"mediaType":"application/vnd.wasm.config.v0+json"},"layers":[{"mediaType":"application/wasm","digest":"` + h + `"}]}`
	f.Add([]byte(index), []byte(compat), []byte(config))
	f.Add([]byte(`{"manifests":[{"digest":"`+h+`"}]}`), []byte(docker), []byte(`{"architecture":"wasm","os":"wasi","rootfs":{"diff_ids":["`+h+`","`+h+`"]}}`))
	f.Add([]byte(`{}`), []byte(artifact), []byte(`{}`))
	f.Add([]byte(`{"manifests":[]}`), []byte(`{"config":{"mediaType":"application/vnd.oci.image.config.v1+json"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd"}]}`), []byte(`{"architecture":"amd64","os":"linux"}`))
	// And whole ones, as built.
	b := mustCompat(f, emptyModule, imagebuild.CompatOptions{})
	idx := imagebuild.BuildIndex(imagebuild.IndexEntry{Image: b, Platform: ocispec.Platform{OS: "wasip1", Architecture: "wasm"}})
	f.Add(idx.Blobs[idx.Root.Digest], b.Blobs[b.Root.Digest], b.Blobs[manifestOf(b).Config.Digest])
	f.Fuzz(func(t *testing.T, indexJSON, manifestJSON, configJSON []byte) {
		var idx ocispec.Index
		if json.Unmarshal(indexJSON, &idx) == nil {
			if d, err := ChooseManifest("fuzz", idx); err == nil && !slices.ContainsFunc(idx.Manifests, func(m ocispec.Descriptor) bool { return m.Digest == d.Digest }) {
				t.Fatalf("chose %v, not in the index", d)
			} else if err != nil && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("refusal of another class: %v", err)
			}
		}
		var m ocispec.Manifest
		if json.Unmarshal(manifestJSON, &m) != nil {
			return
		}
		format, cfg, err := Classify("fuzz", m, configJSON)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("refusal of another class: %v", err)
			}
			return
		}
		switch format {
		case FormatArtifact:
			if len(m.Layers) != 1 || !IsWasmLayer(m.Layers[0].MediaType) {
				t.Fatalf("artifact of layers %v", m.Layers)
			}
			if id := ImageID(format, m, ocispec.Descriptor{Digest: digest.FromBytes(manifestJSON)}); id != digest.FromBytes(manifestJSON).String() {
				t.Fatalf("artifact ID %s", id)
			}
		case FormatCompat:
			if cfg == nil || !IsWasmPlatform(cfg.OS, cfg.Architecture) || len(m.Layers) == 0 {
				t.Fatalf("compat image %+v of config %+v", m, cfg)
			}
			for _, l := range m.Layers {
				if !IsTarLayer(l.MediaType) {
					t.Fatalf("compat layer %s", l.MediaType)
				}
			}
			if err := CheckDiffIDs("fuzz", m, cfg); err == nil && len(cfg.RootFS.DiffIDs) != len(m.Layers) {
				t.Fatalf("%d diff IDs for %d layers accepted", len(cfg.RootFS.DiffIDs), len(m.Layers))
			}
			if m.Config.MediaType != ocispec.MediaTypeImageConfig && m.Config.MediaType != images.MediaTypeDockerSchema2Config {
				t.Fatalf("compat image of config type %q", m.Config.MediaType)
			}
		default:
			t.Fatalf("format %q", format)
		}
	})
}

// FuzzImportLayout imports a fuzzed OCI layout tarball into a fresh store,
// as `wasmcri image import` does: no panic, nothing beside the store
// touched, an imported image runs the module its files hold, within the
// limits.
func FuzzImportLayout(f *testing.F) {
	for _, b := range []*imagebuild.Built{
		mustCompat(f, emptyModule, imagebuild.CompatOptions{ModulePath: "/bin/app.wasm", Files: []imagebuild.TarEntry{{Name: "/etc/motd", Data: []byte("hi")}, {Name: "/app", Link: "bin/app.wasm"}}}),
		mustCompat(f, emptyModule, imagebuild.CompatOptions{Docker: true, Uncompressed: true, Entrypoint: []string{}}),
		imagebuild.BuildArtifact(emptyModule, MediaTypeWasmConfigV0, MediaTypeWasmLayer),
		compatOf("/app.wasm", gzLayer(f, file("app.wasm", emptyModule)), gzLayer(f, whiteout(".wh..."))),
		compatOf("/app", gzLayer(f, file("app.wasm", emptyModule), symlink("app", "/../../app.wasm"))),
	} {
		var buf bytes.Buffer
		if err := imagebuild.LayoutOf(b, "fuzz/app:1").WriteTar(&buf); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		l, err := ReadLayoutTar(bytes.NewReader(data), 4<<20)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("layout refused with %v", err)
			}
			return
		}
		top := fuzzTempDir(t)
		c := plantCanary(t, filepath.Join(top, "canary"))
		s := newService(t, filepath.Join(top, "store"), Options{Logger: quiet, MaxLayerSize: 1 << 20, MaxUnpackedSize: fuzzMaxBytes, MaxUnpackedEntries: fuzzMaxEntries})
		img, err := s.Import(ctx, "fuzz/app:1", l)
		c.check(t)
		if err != nil {
			return
		}
		module, err := s.ReadModule(ctx, img)
		if err != nil || digest.FromBytes(module) != img.Module.Digest {
			t.Fatalf("imported module %s reads back as %s, %v", img.Module.Digest, digest.FromBytes(module), err)
		}
		dir, err := s.Filesystem(ctx, img)
		if err != nil {
			t.Fatalf("files of an imported image: %v", err)
		}
		if img.Format == FormatCompat {
			f, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(img.Module.Name)))
			if err != nil || !bytes.Equal(f, module) {
				t.Fatalf("module %s in the files: %v", img.Module.Name, err)
			}
			if img.Unpacked == nil || img.Unpacked.Bytes > fuzzMaxBytes || img.Unpacked.Inodes > fuzzMaxEntries+1 {
				t.Fatalf("unpacked %+v, over the limits", img.Unpacked)
			}
		}
		c.check(t)
	})
}
