package image

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/singleflight"
)

// Options configure a Service.
type Options struct {
	Registry RegistryOptions
	// MaxLayerSize refuses larger blobs before storing them.
	MaxLayerSize int64
	// MaxModuleSize refuses larger WebAssembly modules; 0 is MaxLayerSize.
	MaxModuleSize int64
	// MaxUnpackedSize bounds what one compat image's layers unpack to: the
	// bytes of its uncompressed layers, summed (and the file data they
	// write). Larger images are refused; 0 is DefaultMaxUnpackedSize.
	MaxUnpackedSize int64
	// MaxUnpackedEntries bounds the entries (files, directories, links,
	// whiteouts) of one compat image's layers, summed; 0 is
	// DefaultMaxUnpackedEntries.
	MaxUnpackedEntries int64
	// PullTimeout bounds one pull, unpacking included.
	PullTimeout time.Duration
	// Validate checks a module fully (e.g. wasmtime's validator) before
	// the image is recorded; nil checks the header only.
	Validate func(module []byte) error
	// Compile makes a module ready to run (wasm's compile cache, keyed by
	// the module's digest) before the image is recorded, so that no
	// container start compiles; an error refuses the pull, and should be
	// errdefs-classed (a module that cannot compile is InvalidArgument).
	// It is called for every pull and import and is cheap for a module
	// compiled before. nil compiles nothing.
	Compile func(ctx context.Context, module digest.Digest, load func() ([]byte, error)) error
	// Deleted is told each blob the store deletes, because no image holds
	// it any more (removed, or left by a crash and reclaimed). A module is
	// a blob of its own, under its digest, so this is how what was
	// compiled from it goes with its images. nil does nothing.
	Deleted func(blob digest.Digest)
	Logger  *slog.Logger
}

// Defaults of the unpacking limits.
const (
	DefaultMaxUnpackedSize    = 4 << 30
	DefaultMaxUnpackedEntries = 200_000
)

// Config keys the limits are set by, named in the errors they cause.
const (
	keyMaxUnpackedSize    = "image.max_unpacked_size"
	keyMaxUnpackedEntries = "image.max_unpacked_entries"
	keyMaxModuleSize      = "image.max_module_size"
)

// Service is the image side of the runtime: pulls into the Store and
// answers lookups from it.
type Service struct {
	*Store
	opts  Options
	pulls singleflight.Group
}

// NewService opens the image store under contentDir with metadata in db,
// unpacked images in image-fs beside it. Before anything is served it
// makes both directories private to the daemon and reclaims what a crash
// can leave behind (see reclaim).
func NewService(db *bolt.DB, contentDir string, opts Options) (*Service, error) {
	st, err := NewStore(db, contentDir)
	if err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxLayerSize <= 0 {
		opts.MaxLayerSize = 512 << 20
	}
	if opts.MaxModuleSize <= 0 {
		opts.MaxModuleSize = opts.MaxLayerSize
	}
	if opts.MaxUnpackedSize <= 0 {
		opts.MaxUnpackedSize = DefaultMaxUnpackedSize
	}
	if opts.MaxUnpackedEntries <= 0 {
		opts.MaxUnpackedEntries = DefaultMaxUnpackedEntries
	}
	if opts.PullTimeout <= 0 {
		opts.PullTimeout = 10 * time.Minute
	}
	st.fsDir = filepath.Join(filepath.Dir(contentDir), "image-fs")
	st.deleted = opts.Deleted
	if err := st.private(); err != nil {
		return nil, err
	}
	r, err := st.reclaim(context.Background())
	if err != nil {
		// Leftovers waste disk; they harm nothing else.
		opts.Logger.Warn("reclaiming what a crash left in the image store", "error", err)
	}
	if r != (reclaimed{}) {
		opts.Logger.Info("reclaimed what a crash left in the image store",
			"ingests", r.ingests, "blobs", r.blobs, "unpacked trees", r.trees, "bytes", r.bytes)
	}
	return &Service{Store: st, opts: opts}, nil
}

// budget is a fresh unpacking budget under the service's limits.
func (s *Service) budget() *budget {
	return &budget{maxBytes: s.opts.MaxUnpackedSize, maxEntries: s.opts.MaxUnpackedEntries}
}
