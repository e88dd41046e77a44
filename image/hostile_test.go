package image_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	. "github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testregistry"
)

// moduleNamed is a valid empty module told apart by a custom section.
func moduleNamed(name string) []byte {
	sec := append([]byte{byte(len(name))}, name...)
	return append(append(append([]byte{}, emptyModule...), 0, byte(len(sec))), sec...)
}

// entry is one crafted layer entry: a header, with data for regular files.
type entry struct {
	hdr  tar.Header
	data []byte
}

func file(name string, data []byte) entry {
	return entry{tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}, data}
}

func dir(name string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}}
}

func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
}

func hardlink(name, target string) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target, Mode: 0o644}}
}

// whiteout is an empty file named as a whiteout, as overlay diffs write them.
func whiteout(name string) entry { return file(name, nil) }

// tarOf writes entries as a plain tar, exactly as given (no cleaning).
func tarOf(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := e.hdr
		hdr.ModTime = time.Unix(0, 0)
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatalf("tar header %q: %v", hdr.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipOf(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	if _, err := gz.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gunzipOf undoes gzipOf.
func gunzipOf(t testing.TB, b []byte) []byte {
	t.Helper()
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// layer is a gzip layer blob with the diff ID of its tar.
type crafted struct {
	blob   []byte
	diffID digest.Digest
}

func gzLayer(t testing.TB, entries ...entry) crafted {
	t.Helper()
	plain := tarOf(t, entries...)
	return crafted{gzipOf(t, plain), digest.FromBytes(plain)}
}

// wasmConfig is a compat image config running entrypoint, over diffIDs.
func wasmConfig(entrypoint string, diffIDs ...digest.Digest) ocispec.Image {
	return ocispec.Image{
		Platform: ocispec.Platform{OS: "wasip1", Architecture: "wasm"},
		Config:   ocispec.ImageConfig{Entrypoint: []string{entrypoint}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
}

// imageOf builds a compat image of cfg over layers. The config is taken as
// given: its diff IDs are whatever the test put there.
func imageOf(cfg ocispec.Image, layers ...crafted) *imagebuild.Built {
	b := &imagebuild.Built{}
	var descs []ocispec.Descriptor
	for _, l := range layers {
		descs = append(descs, b.Add(ocispec.MediaTypeImageLayerGzip, l.blob))
	}
	c := b.AddJSON(ocispec.MediaTypeImageConfig, cfg)
	b.SetManifest(ocispec.MediaTypeImageManifest, c, descs, nil)
	return b
}

// compatOf builds a compat image whose config names layers' diff IDs.
func compatOf(entrypoint string, layers ...crafted) *imagebuild.Built {
	var ids []digest.Digest
	for _, l := range layers {
		ids = append(ids, l.diffID)
	}
	return imageOf(wasmConfig(entrypoint, ids...), layers...)
}

// Two images with byte-identical configs and different layers: the config
// names one set of diff IDs, so only the image whose layers are those is
// recorded, whichever is pulled first; the other's name never runs its
// module.
func TestIdenticalConfigsDifferentLayers(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	modA, modB := moduleNamed("A"), moduleNamed("B")
	la := gzLayer(t, file("app.wasm", modA))
	lb := gzLayer(t, file("app.wasm", modB))
	cfg := wasmConfig("/app.wasm", la.diffID) // what both images carry
	a, b := imageOf(cfg, la), imageOf(cfg, lb)
	if a.Blobs[manifestOf(b).Config.Digest] == nil {
		t.Fatal("test expects the configs to be the same blob")
	}
	push(t, reg+"/same/a:1", a)
	push(t, reg+"/same/b:1", b)

	for _, order := range [][]string{{"a", "b"}, {"b", "a"}} {
		t.Run(strings.Join(order, "-then-"), func(t *testing.T) {
			s := newService(t, t.TempDir(), Options{})
			for _, name := range order {
				img, err := s.Pull(ctx, reg+"/same/"+name+":1", nil)
				if name == "b" {
					wantErr(t, err, errdefs.ErrInvalidArgument, "not to the diff_id "+la.diffID.String())
					if !strings.Contains(err.Error(), digest.FromBytes(lb.blob).String()) {
						t.Errorf("the refusal does not name the layer: %v", err)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if img.Module.Digest != digest.FromBytes(modA) {
					t.Fatalf("a runs module %s, not its own %s", img.Module.Digest, digest.FromBytes(modA))
				}
			}
			if _, err := s.Get(reg + "/same/b:1"); !errdefs.IsNotFound(err) {
				t.Fatalf("b's name finds an image: %v", err)
			}
			img := mustGet(t, s, reg+"/same/a:1")
			got, err := s.ReadModule(ctx, img)
			if err != nil || !bytes.Equal(got, modA) {
				t.Fatalf("a's name reads %q, %v", got, err)
			}
		})
	}
}

// A config whose diff IDs do not match its layers' count is refused.
func TestDiffIDCountMustMatch(t *testing.T) {
	reg := testregistry.Start(t)
	l := gzLayer(t, file("app.wasm", emptyModule))
	push(t, reg+"/ids/none:1", imageOf(wasmConfig("/app.wasm"), l))
	push(t, reg+"/ids/two:1", imageOf(wasmConfig("/app.wasm", l.diffID, l.diffID), l))
	s := newService(t, t.TempDir(), Options{})
	for _, ref := range []string{"none", "two"} {
		_, err := s.Pull(context.Background(), reg+"/ids/"+ref+":1", nil)
		wantErr(t, err, errdefs.ErrInvalidArgument, "rootfs.diff_ids for 1 layers")
	}
}

// One blob can be both a Wasm artifact's manifest and a compat image's
// config (JSON decoding ignores the other's fields), giving the two images
// one ID. Whichever comes second is refused: one ID never runs two modules.
func TestArtifactManifestThatIsAlsoACompatConfig(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	modArtifact, modCompat := moduleNamed("artifact"), moduleNamed("compat")
	l := gzLayer(t, file("app.wasm", modCompat))

	artifact := &imagebuild.Built{}
	wasmLayer := artifact.Add(MediaTypeWasmLayer, modArtifact)
	wasmCfg := artifact.Add(MediaTypeWasmConfigV0, []byte("{}"))
	// The manifest's "config" object doubles as the image config's config.
	both := map[string]any{
		"schemaVersion": 2,
		"mediaType":     ocispec.MediaTypeImageManifest,
		"config":        map[string]any{"mediaType": wasmCfg.MediaType, "digest": wasmCfg.Digest, "size": wasmCfg.Size, "Entrypoint": []string{"/app.wasm"}},
		"layers":        []ocispec.Descriptor{wasmLayer},
		"architecture":  "wasm",
		"os":            "wasip1",
		"rootfs":        map[string]any{"type": "layers", "diff_ids": []digest.Digest{l.diffID}},
	}
	artifact.Root = artifact.AddJSON(ocispec.MediaTypeImageManifest, both)

	compat := &imagebuild.Built{}
	layerDesc := compat.Add(ocispec.MediaTypeImageLayerGzip, l.blob)
	cfgDesc := compat.Add(ocispec.MediaTypeImageConfig, artifact.Blobs[artifact.Root.Digest])
	compat.SetManifest(ocispec.MediaTypeImageManifest, cfgDesc, []ocispec.Descriptor{layerDesc}, nil)
	push(t, reg+"/both/artifact:1", artifact)
	push(t, reg+"/both/compat:1", compat)

	for _, order := range [][]string{{"artifact", "compat"}, {"compat", "artifact"}} {
		t.Run(strings.Join(order, "-then-"), func(t *testing.T) {
			s := newService(t, t.TempDir(), Options{})
			first, err := s.Pull(ctx, reg+"/both/"+order[0]+":1", nil)
			if err != nil {
				t.Fatal(err)
			}
			if first.ID != artifact.Root.Digest.String() {
				t.Fatalf("test expects the ID %s, got %s", artifact.Root.Digest, first.ID)
			}
			want := map[string][]byte{"artifact": modArtifact, "compat": modCompat}
			if first.Module.Digest != digest.FromBytes(want[order[0]]) {
				t.Fatalf("%s runs %s", order[0], first.Module.Digest)
			}
			_, err = s.Pull(ctx, reg+"/both/"+order[1]+":1", nil)
			wantErr(t, err, errdefs.ErrConflict, "refusing to merge")
			if _, err := s.Get(reg + "/both/" + order[1] + ":1"); !errdefs.IsNotFound(err) {
				t.Fatalf("%s's name finds an image: %v", order[1], err)
			}
			img := mustGet(t, s, reg+"/both/"+order[0]+":1")
			got, err := s.ReadModule(ctx, img)
			if err != nil || !bytes.Equal(got, want[order[0]]) || len(img.RepoTags) != 1 {
				t.Fatalf("%s after the refused pull: %+v runs %q, %v", order[0], img, got, err)
			}
		})
	}
}

// manifestOf decodes b's root manifest.
func manifestOf(b *imagebuild.Built) ocispec.Manifest {
	var m ocispec.Manifest
	if err := json.Unmarshal(b.Blobs[b.Root.Digest], &m); err != nil {
		panic(err)
	}
	return m
}

// record itself never merges two modules under one ID, whatever reaches it.
func TestRecordRefusesAnotherModuleUnderOneID(t *testing.T) {
	s := newService(t, t.TempDir(), Options{})
	id := digest.FromString("config").String()
	first := &Image{ID: id, Format: FormatCompat, RepoTags: []string{"docker.io/x/a:1"}, Module: Module{Digest: digest.FromBytes(moduleNamed("A"))}}
	if _, err := s.Record(first, nil); err != nil {
		t.Fatal(err)
	}
	same := &Image{ID: id, Format: FormatCompat, RepoTags: []string{"docker.io/x/c:1"}, Module: first.Module}
	if _, err := s.Record(same, nil); err != nil {
		t.Fatalf("the same image under another name: %v", err)
	}
	other := &Image{ID: id, Format: FormatCompat, RepoTags: []string{"docker.io/x/b:1", "docker.io/x/a:1"}, Module: Module{Digest: digest.FromBytes(moduleNamed("B"))}}
	_, err := s.Record(other, nil)
	wantErr(t, err, errdefs.ErrConflict, "refusing to merge")
	if _, err := s.Get("docker.io/x/b:1"); !errdefs.IsNotFound(err) {
		t.Fatalf("the refused image's name was recorded: %v", err)
	}
	if img := mustGet(t, s, "docker.io/x/a:1"); img.Module.Digest != first.Module.Digest || len(img.RepoTags) != 2 {
		t.Fatalf("the recorded image changed: %+v", img)
	}
}

// canary is a directory holding one file, planted where no unpacking may
// reach.
type canary string

func plantCanary(t *testing.T, dir string) canary {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	return canary(dir)
}

func (c canary) check(t testing.TB) {
	t.Helper()
	entries, err := os.ReadDir(string(c))
	if err != nil {
		t.Fatalf("canary %s: %v", c, err)
	}
	if len(entries) != 1 || entries[0].Name() != "secret" {
		t.Fatalf("canary %s changed: %v", c, entries)
	}
	fi, err := os.Lstat(filepath.Join(string(c), "secret"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("canary file changed: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(string(c), "secret")); string(b) != "host secret" {
		t.Fatalf("canary file holds %q", b)
	}
}

// treeOf lists dir: each path, its type, and a regular file's content.
func treeOf(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out[rel] = "-> " + l
		case d.IsDir():
			out[rel] = "dir"
		default:
			b, _ := os.ReadFile(p)
			out[rel] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// unpackRefused pulls ref and gets its files; one of the two must refuse.
func pullAndUnpack(ctx context.Context, s *Service, ref string) (*Image, string, error) {
	img, err := s.Pull(ctx, ref, nil)
	if err != nil {
		return nil, "", err
	}
	dir, err := s.Filesystem(ctx, img)
	return img, dir, err
}

// Whiteouts naming "." or "..", entries and links through an image's own
// symlinks, and links to what is not a regular file of the image are
// refused; neither canaries beside the tree nor another image's files move.
func TestHostileWhiteoutsAndLinks(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	top := t.TempDir()
	outside := plantCanary(t, filepath.Join(top, "canary"))
	s := newService(t, filepath.Join(top, "svc"), Options{})

	good := gzLayer(t, file("app.wasm", emptyModule), dir("etc"), file("etc/motd", []byte("hello")))
	push(t, reg+"/ok/good:1", compatOf("/app.wasm", good))
	_, goodDir, err := pullAndUnpack(ctx, s, reg+"/ok/good:1")
	if err != nil {
		t.Fatal(err)
	}
	goodTree := treeOf(t, goodDir)
	beside := plantCanary(t, filepath.Join(filepath.Dir(goodDir), "canary"))

	base := []entry{file("app.wasm", emptyModule), dir("dir"), file("dir/file", []byte("x"))}
	goodName := filepath.Base(goodDir)
	for _, tc := range []struct {
		name    string
		entries []entry
		says    string
	}{
		{"whiteout-dot", []entry{whiteout(".wh..")}, "not a name in its directory"},
		{"whiteout-dotdot", []entry{whiteout(".wh...")}, "not a name in its directory"},
		{"whiteout-empty", []entry{whiteout("dir/.wh.")}, "not a name in its directory"},
		{"dir-whiteout-dot", []entry{whiteout("dir/.wh..")}, "not a name in its directory"},
		{"dir-whiteout-dotdot", []entry{whiteout("./dir/.wh...")}, "not a name in its directory"},
		{"opaque-as-dir", []entry{file("dir/.wh..wh..opq/x", nil)}, "whiteout name"},
		{"whiteout-as-dir", []entry{whiteout("dir/.wh.file/.wh..")}, "whiteout name"},
		{"whiteout-through-abs-link", []entry{symlink("out", string(outside)), whiteout("out/.wh.secret")}, "through a symlink"},
		{"whiteout-through-up-link", []entry{symlink("up", "../../.."), whiteout("up/.wh." + goodName)}, "through a symlink"},
		{"opaque-through-link", []entry{symlink("up", ".."), whiteout("up/.wh..wh..opq")}, "through a symlink"},
		{"opaque-through-deep-link", []entry{symlink("dir/up", "../../../.."), whiteout("dir/up/.wh..wh..opq")}, "through a symlink"},
		{"file-through-link", []entry{symlink("out", string(outside)), file("out/new", []byte("x"))}, "through a symlink"},
		{"dir-through-link", []entry{symlink("up", "../.."), dir("up/made")}, "through a symlink"},
		{"hardlink-to-symlink-out", []entry{symlink("s", filepath.Join(string(outside), "secret")), hardlink("h", "s")}, "not a regular file"},
		{"hardlink-through-link", []entry{symlink("out", string(outside)), hardlink("h", "out/secret")}, "through a symlink"},
		{"hardlink-to-dir", []entry{hardlink("h", "dir")}, "not a regular file"},
		{"hardlink-to-nothing", []entry{hardlink("h", "missing")}, "not a regular file"},
		{"hardlink-climbing", []entry{hardlink("h", "../../canary/secret")}, "climbs out"},
		{"file-climbing", []entry{file("../"+goodName+"/app.wasm", []byte("x"))}, "climbs out"},
		{"whiteout-climbing", []entry{whiteout("../.wh." + goodName)}, "climbs out"},
		{"long-name", []entry{file(strings.Repeat("d/", 2100)+"f", nil)}, "longer than 4096"},
		{"long-link", []entry{symlink("l", strings.Repeat("x", 5000))}, "longer than 4096"},
		{"root-as-file", []entry{file(".", []byte("x"))}, "where the image root is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The hostile entries come in a layer of their own over the
			// base, and also inside the base layer itself.
			for i, layers := range [][]crafted{
				{gzLayer(t, base...), gzLayer(t, tc.entries...)},
				{gzLayer(t, append(slices.Clone(base), tc.entries...)...)},
			} {
				ref := reg + "/hostile/" + tc.name + ":" + strconv.Itoa(i)
				push(t, ref, compatOf("/app.wasm", layers...))
				_, _, err := pullAndUnpack(ctx, s, ref)
				wantErr(t, err, errdefs.ErrInvalidArgument, tc.says)
				outside.check(t)
				beside.check(t)
				if got := treeOf(t, goodDir); !maps.Equal(got, goodTree) {
					t.Fatalf("another image's files changed: %v, were %v", got, goodTree)
				}
				leftovers(t, s)
			}
		})
	}
}

// leftovers fails the test if an unpacking left its temporary tree.
func leftovers(t testing.TB, s *Service) {
	t.Helper()
	entries, _ := os.ReadDir(s.FSDir())
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Fatalf("image-fs holds %s after the unpack ended", e.Name())
		}
	}
}

// Whiteouts and links as image builders write them keep working: a file
// whited out, a directory made opaque (but for what its own layer adds), a
// file replacing a symlink out of the image, a hard link between files.
func TestWhiteoutsAndLinksAsBuildersWriteThem(t *testing.T) {
	reg := testregistry.Start(t)
	ctx := context.Background()
	top := t.TempDir()
	outside := plantCanary(t, filepath.Join(top, "canary"))
	s := newService(t, filepath.Join(top, "svc"), Options{})
	lower := gzLayer(t,
		file("app.wasm", emptyModule),
		dir("etc"), file("etc/keep", []byte("keep")), file("etc/drop", []byte("drop")),
		dir("data"), file("data/a", []byte("a")), dir("data/sub"), file("data/sub/b", []byte("b")),
		symlink("link", filepath.Join(string(outside), "secret")),
		dir("was-dir"), file("was-dir/x", nil),
		file("was-file", []byte("file")),
	)
	upper := gzLayer(t,
		whiteout("etc/.wh.drop"),
		file("data/c", []byte("c")), // before the opaque marker, and kept
		whiteout("data/.wh..wh..opq"),
		file("data/d", []byte("d")),
		file("link", []byte("now a file")),
		file("was-dir", []byte("now a file")),
		dir("was-file"),
		hardlink("app2.wasm", "app.wasm"),
		whiteout(".wh..wh.plnk"),
	)
	push(t, reg+"/ok/layers:1", compatOf("/app2.wasm", lower, upper))
	img, dir, err := pullAndUnpack(ctx, s, reg+"/ok/layers:1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		".": "dir", "app.wasm": string(emptyModule), "app2.wasm": string(emptyModule),
		"etc": "dir", "etc/keep": "keep",
		"data": "dir", "data/c": "c", "data/d": "d",
		"link": "now a file", "was-dir": "now a file", "was-file": "dir",
	}
	if got := treeOf(t, dir); !maps.Equal(got, want) {
		t.Fatalf("tree = %v\nwant %v", got, want)
	}
	a, _ := os.Stat(filepath.Join(dir, "app.wasm"))
	b, _ := os.Stat(filepath.Join(dir, "app2.wasm"))
	if !os.SameFile(a, b) {
		t.Error("the hard link is a copy")
	}
	if img.Module.Digest != digest.FromBytes(emptyModule) {
		t.Errorf("module %s", img.Module.Digest)
	}
	outside.check(t)
}
