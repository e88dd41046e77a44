package image

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Format says which of the Wasm image layouts an image was pulled in.
type Format string

const (
	// FormatArtifact is a Wasm OCI artifact: the module is a layer of its own
	// (application/wasm or application/vnd.wasm.content.layer.v1+wasm).
	FormatArtifact Format = "wasm-artifact"
	// FormatCompat is a regular image built for platform wasip1/wasi + wasm
	// whose tar layer holds the module, named by the entrypoint.
	FormatCompat Format = "compat"
)

// Media types of the Wasm image layouts in use.
const (
	// MediaTypeWasmLayer is the CNCF TAG Runtime Wasm OCI artifact layer.
	MediaTypeWasmLayer = "application/wasm"
	// MediaTypeWasmLayerV1 is the older wasm-to-oci layer (runwasi, wasm-to-oci).
	MediaTypeWasmLayerV1 = "application/vnd.wasm.content.layer.v1+wasm"
	// MediaTypeWasmConfigV0 and V1 are the artifact configs; the layer, not
	// the config, decides that an image is a Wasm artifact.
	MediaTypeWasmConfigV0 = "application/vnd.wasm.config.v0+json"
	MediaTypeWasmConfigV1 = "application/vnd.wasm.config.v1+json"
	// AnnotationCompatVariant marks compat images built for crun/runwasi.
	AnnotationCompatVariant = "module.wasm.image/variant"
)

func isWasmLayer(mt string) bool {
	return mt == MediaTypeWasmLayer || mt == MediaTypeWasmLayerV1
}

func isIndex(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == images.MediaTypeDockerSchema2ManifestList
}

func isManifest(mt string) bool {
	return mt == ocispec.MediaTypeImageManifest || mt == images.MediaTypeDockerSchema2Manifest
}

func isTarLayer(mt string) bool {
	switch mt {
	case ocispec.MediaTypeImageLayer, ocispec.MediaTypeImageLayerGzip,
		ocispec.MediaTypeImageLayerNonDistributable, ocispec.MediaTypeImageLayerNonDistributableGzip, //nolint:staticcheck // still found in registries
		images.MediaTypeDockerSchema2Layer, images.MediaTypeDockerSchema2LayerGzip,
		images.MediaTypeDockerSchema2LayerForeign, images.MediaTypeDockerSchema2LayerForeignGzip:
		return true
	}
	return false
}

// isWasmPlatform is true for the platforms compat images are built for.
func isWasmPlatform(os, arch string) bool {
	return (os == "wasip1" || os == "wasi") && arch == "wasm"
}

// chooseManifest picks the Wasm entry of an image index. An index of only
// Linux images is refused with the platforms it holds.
func chooseManifest(ref string, idx ocispec.Index) (ocispec.Descriptor, error) {
	var found []string
	for _, m := range idx.Manifests {
		if m.Platform == nil {
			found = append(found, "unknown")
			continue
		}
		if isWasmPlatform(m.Platform.OS, m.Platform.Architecture) {
			return m, nil
		}
		found = append(found, m.Platform.OS+"/"+m.Platform.Architecture)
	}
	// An index without platforms may still hold a single Wasm artifact.
	if len(idx.Manifests) == 1 && idx.Manifests[0].Platform == nil {
		return idx.Manifests[0], nil
	}
	return ocispec.Descriptor{}, fmt.Errorf("%s is not a WebAssembly image: its index holds %s and no wasip1/wasm or wasi/wasm entry: %w",
		ref, strings.Join(found, ", "), errdefs.ErrInvalidArgument)
}

// classify decides which Wasm layout a manifest is in, reading its config
// where the layers alone do not tell. It refuses anything else, naming what
// it found.
func classify(ref string, m ocispec.Manifest, configJSON []byte) (Format, *ocispec.Image, error) {
	var wasmLayers int
	for _, l := range m.Layers {
		if isWasmLayer(l.MediaType) {
			wasmLayers++
		}
	}
	if wasmLayers > 0 {
		if wasmLayers != 1 || len(m.Layers) != 1 {
			return "", nil, fmt.Errorf("%s is a Wasm artifact with %d layers (%d Wasm); wasmcri runs artifacts holding exactly one module: %w",
				ref, len(m.Layers), wasmLayers, errdefs.ErrInvalidArgument)
		}
		return FormatArtifact, nil, nil
	}

	var cfg ocispec.Image
	if m.Config.MediaType == ocispec.MediaTypeImageConfig || m.Config.MediaType == images.MediaTypeDockerSchema2Config {
		if err := json.Unmarshal(configJSON, &cfg); err != nil {
			return "", nil, fmt.Errorf("%s: image config %s: %v: %w", ref, m.Config.Digest, err, errdefs.ErrInvalidArgument)
		}
	}
	layerTypes := make([]string, 0, len(m.Layers))
	for _, l := range m.Layers {
		if !slices.Contains(layerTypes, l.MediaType) {
			layerTypes = append(layerTypes, l.MediaType)
		}
	}
	if !isWasmPlatform(cfg.OS, cfg.Architecture) {
		platform := cfg.OS + "/" + cfg.Architecture
		if platform == "/" {
			platform = "none"
		}
		return "", nil, fmt.Errorf("%s is not a WebAssembly image: config %s, platform %s, layers %s; wasmcri runs Wasm artifacts (layer %s or %s) and images for wasip1/wasm or wasi/wasm: %w",
			ref, m.Config.MediaType, platform, strings.Join(layerTypes, ", "), MediaTypeWasmLayer, MediaTypeWasmLayerV1, errdefs.ErrInvalidArgument)
	}
	if len(m.Layers) == 0 {
		return "", nil, fmt.Errorf("%s: %s/%s image has no layers to hold a module: %w", ref, cfg.OS, cfg.Architecture, errdefs.ErrInvalidArgument)
	}
	for _, l := range m.Layers {
		if !isTarLayer(l.MediaType) {
			return "", nil, fmt.Errorf("%s: layer %s has media type %s; compat images need tar or tar+gzip layers: %w",
				ref, l.Digest, l.MediaType, errdefs.ErrInvalidArgument)
		}
	}
	return FormatCompat, &cfg, nil
}

// checkDiffIDs refuses a compat image whose config does not name one
// uncompressed digest (rootfs.diff_ids) per layer: each layer is checked
// against its own as it is read, so that the config, and with it the image
// ID, pins the files the image holds.
func checkDiffIDs(ref string, m ocispec.Manifest, cfg *ocispec.Image) error {
	if n := len(cfg.RootFS.DiffIDs); n != len(m.Layers) {
		return fmt.Errorf("%s: image config %s lists %d rootfs.diff_ids for %d layers: %w",
			ref, m.Config.Digest, n, len(m.Layers), errdefs.ErrInvalidArgument)
	}
	for i, d := range cfg.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("%s: image config %s: diff_id %d %q: %v: %w", ref, m.Config.Digest, i, d, err, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}
