// Package imagebuild makes Wasm images of a .wasm file, in memory and
// without Docker, and pushes them to a registry or writes them as an OCI
// layout. It is the client side of images: `wasmcri image push` and
// `wasmcri image import` use it, and the tests and benchmarks make their
// images with it. The daemon only pulls and imports images (package
// image, its image service), so this is a package of its own: it imports
// image, for its registry options and OCI layout type, and image never
// imports it. It lives under image/, not internal/, because it is part of
// the CLI, not a test helper, and it makes the formats image accepts.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Built is an image held in memory: its root descriptor and every blob,
// ready to push. It is how `wasmcri image push` and the tests make images
// from a .wasm file without Docker.
type Built struct {
	Root  ocispec.Descriptor
	Blobs map[digest.Digest][]byte
	// order is children before parents, the order a registry accepts.
	order []ocispec.Descriptor
}

// Add stores a blob and returns its descriptor.
func (b *Built) Add(mediaType string, data []byte) ocispec.Descriptor {
	if b.Blobs == nil {
		b.Blobs = map[digest.Digest][]byte{}
	}
	d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if _, ok := b.Blobs[d.Digest]; !ok {
		b.Blobs[d.Digest] = data
		b.order = append(b.order, d)
	}
	return d
}

// AddJSON stores v as a JSON blob.
func (b *Built) AddJSON(mediaType string, v any) ocispec.Descriptor {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called with plain structs
	}
	return b.Add(mediaType, data)
}

// SetManifest adds a manifest of config and layers and makes it the root.
func (b *Built) SetManifest(mediaType string, config ocispec.Descriptor, layers []ocispec.Descriptor, annotations map[string]string) ocispec.Descriptor {
	return b.setManifest(ocispec.Manifest{MediaType: mediaType, Config: config, Layers: layers, Annotations: annotations})
}

func (b *Built) setManifest(m ocispec.Manifest) ocispec.Descriptor {
	m.Versioned = specs.Versioned{SchemaVersion: 2}
	b.Root = b.AddJSON(m.MediaType, m)
	return b.Root
}

// BuildArtifact makes a Wasm OCI artifact: one module layer of layerType
// (image.MediaTypeWasmLayer or image.MediaTypeWasmLayerV1) and a wasm config.
func BuildArtifact(module []byte, configType, layerType string) *Built {
	return BuildArtifactOf(module, configType, layerType, "")
}

// BuildArtifactOf is BuildArtifact with the manifest's artifactType set
// (OCI 1.1), when not empty.
func BuildArtifactOf(module []byte, configType, layerType, artifactType string) *Built {
	b := &Built{}
	layer := b.Add(layerType, module)
	cfg := b.AddJSON(configType, map[string]any{
		"created":      time.Unix(0, 0).UTC(),
		"architecture": "wasm",
		"os":           "wasip1",
		"layerDigests": []string{layer.Digest.String()},
	})
	b.setManifest(ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: artifactType, Config: cfg, Layers: []ocispec.Descriptor{layer}})
	return b
}

// CompatOptions shape a compat image.
type CompatOptions struct {
	// ModulePath is where the module sits in the layer ("/app.wasm").
	ModulePath string
	OS         string // wasip1 (default) or wasi
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	// Annotations go on the manifest (e.g. module.wasm.image/variant).
	Annotations map[string]string
	// Docker uses Docker schema 2 media types instead of OCI ones.
	Docker bool
	// Uncompressed writes the layer as a plain tar.
	Uncompressed bool
	// User is the image config's user ("1002", "www-data:www-data").
	User string
	// Files are more entries of the layer, after the module.
	Files []TarEntry
}

// BuildCompat makes a compat image: a gzip tar layer holding the module at
// opts.ModulePath, platform os/wasm, entrypoint naming the module unless
// opts.Entrypoint says otherwise.
func BuildCompat(module []byte, opts CompatOptions) (*Built, error) {
	if opts.ModulePath == "" {
		opts.ModulePath = "/module.wasm"
	}
	if opts.OS == "" {
		opts.OS = "wasip1"
	}
	if opts.Entrypoint == nil {
		// A non-nil empty entrypoint means none: the module is then found
		// as the only .wasm file of the layer.
		opts.Entrypoint = []string{opts.ModulePath}
	}
	layerTar, err := TarGzEntries(append([]TarEntry{{Name: opts.ModulePath, Data: module}}, opts.Files...))
	if err != nil {
		return nil, err
	}
	plain := mustGunzip(layerTar)
	manifestType, configType, layerType := ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, ocispec.MediaTypeImageLayerGzip
	if opts.Docker {
		manifestType, configType, layerType = images.MediaTypeDockerSchema2Manifest, images.MediaTypeDockerSchema2Config, images.MediaTypeDockerSchema2LayerGzip
	}
	if opts.Uncompressed {
		layerTar, layerType = plain, strings.TrimSuffix(layerType, ".gzip")
		layerType = strings.TrimSuffix(layerType, "+gzip")
	}
	b := &Built{}
	layer := b.Add(layerType, layerTar)
	cfg := b.AddJSON(configType, ocispec.Image{
		Platform: ocispec.Platform{OS: opts.OS, Architecture: "wasm"},
		Config:   ocispec.ImageConfig{Entrypoint: opts.Entrypoint, Cmd: opts.Cmd, Env: opts.Env, WorkingDir: opts.WorkingDir, User: opts.User},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(plain)}},
	})
	b.SetManifest(manifestType, cfg, []ocispec.Descriptor{layer}, opts.Annotations)
	return b, nil
}

// mustGunzip undoes TarGz for the config's diff ID.
func mustGunzip(b []byte) []byte {
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		panic(err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		panic(err)
	}
	return out
}

// IndexEntry is one image of an index with its platform.
type IndexEntry struct {
	Image    *Built
	Platform ocispec.Platform
}

// BuildIndex makes an image index over the entries.
func BuildIndex(entries ...IndexEntry) *Built {
	b := &Built{}
	var manifests []ocispec.Descriptor
	for _, e := range entries {
		for _, d := range e.Image.order {
			b.Add(d.MediaType, e.Image.Blobs[d.Digest])
		}
		m := e.Image.Root
		p := e.Platform
		m.Platform = &p
		manifests = append(manifests, m)
	}
	b.Root = b.AddJSON(ocispec.MediaTypeImageIndex, ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: manifests,
	})
	return b
}

// TarGz writes files (path -> bytes) as a gzip tar, in path order.
func TarGz(files map[string][]byte) ([]byte, error) {
	entries := make([]TarEntry, 0, len(files))
	for _, name := range slices.Sorted(maps.Keys(files)) {
		entries = append(entries, TarEntry{Name: name, Data: files[name]})
	}
	return TarGzEntries(entries)
}

// TarEntry is a file, or with Link a symlink, of a layer.
type TarEntry struct {
	Name string
	Data []byte
	Link string
}

// TarGzEntries writes entries as a gzip tar, in order.
func TarGzEntries(entries []TarEntry) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		hdr := &tar.Header{Name: path.Clean(e.Name), Mode: 0o755, Size: int64(len(e.Data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if e.Link != "" {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeSymlink, e.Link, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
