package image_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	. "github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/internal/inroot"
)

// What unpacking costs a file: b.N files in 100 directories, one layer.
func BenchmarkUnpackFiles(b *testing.B) {
	entries := []entry{file("app.wasm", emptyModule)}
	for i := range b.N {
		if i%100 == 0 {
			entries = append(entries, dir(fmt.Sprintf("d%03d", i/100%100)))
		}
		entries = append(entries, file(fmt.Sprintf("d%03d/f%07d", i/100%100, i), []byte("content\n")))
	}
	l := gzLayer(b, entries...)
	cs := newService(b, b.TempDir(), Options{}).Content()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(l.blob), Size: int64(len(l.blob))}
	if err := content.WriteBlob(context.Background(), cs, "bench", bytes.NewReader(l.blob), desc); err != nil {
		b.Fatal(err)
	}
	root := b.TempDir()
	tree, err := inroot.Open(root)
	if err != nil {
		b.Fatal(err)
	}
	defer tree.Close()
	b.ResetTimer()
	bud := NewBudget(1<<40, 1<<40)
	if err := ApplyLayer(context.Background(), cs, desc, l.diffID, tree, bud); err != nil {
		b.Fatal(err)
	}
}
