package imagebuild

import (
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/image"
)

// LayoutOf makes a one-image layout of b, naming it ref.
func LayoutOf(b *Built, ref string) *image.Layout {
	root := b.Root
	root.Annotations = map[string]string{ocispec.AnnotationRefName: ref}
	return &image.Layout{
		Index: ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{root}},
		Blobs: b.Blobs,
	}
}
