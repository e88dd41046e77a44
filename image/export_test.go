package image

import (
	"context"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/internal/inroot"
	bolt "go.etcd.io/bbolt"
)

// The package's insides that its tests reach into. The tests are package
// image_test, not image: they build their images with imagebuild, which
// imports image.

var (
	ChooseManifest = chooseManifest
	Classify       = classify
	CheckDiffIDs   = checkDiffIDs
	ImageID        = imageID
	IsWasmLayer    = isWasmLayer
	IsWasmPlatform = isWasmPlatform
	IsTarLayer     = isTarLayer
)

const TempPrefix = tempPrefix

// Budget is what unpacking one image may take.
type Budget = budget

func NewBudget(maxBytes, maxEntries int64) *Budget {
	return &budget{maxBytes: maxBytes, maxEntries: maxEntries}
}

// ApplyLayer writes one layer's entries into tree, as a pull does.
func ApplyLayer(ctx context.Context, cs content.Provider, desc ocispec.Descriptor, diffID digest.Digest, tree *inroot.Root, b *Budget) error {
	a := newApplier(tree, desc.Digest.String())
	defer a.close()
	return applyLayer(ctx, cs, desc, diffID, a, b)
}

// StatTree is what the unpacked tree dir takes.
func StatTree(dir string) (Unpacked, error) {
	st, err := statTree(dir)
	return st.Unpacked, err
}

// FSDir is the directory of the images' unpacked files.
func (s *Store) FSDir() string { return s.fsDir }

func (s *Store) FSPath(id string) (string, error) { return s.fsPath(id) }

func (s *Store) Record(img *Image, sizes map[digest.Digest]int64) (*Image, error) {
	return s.record(img, sizes)
}

// EditRecord changes image id's record in place.
func (s *Store) EditRecord(id string, f func(*Image)) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		img, err := getImage(tx, id)
		if err != nil {
			return err
		}
		f(img)
		return putImage(tx, img)
	})
}
