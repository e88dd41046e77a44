package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/internal/inroot"
)

// budget is what unpacking one image may take, over all its layers. It
// counts the uncompressed bytes of the layers (tar headers, padding and
// anything past the tar's end included: everything that is decompressed
// and hashed) and the bytes of file data written, which a sparse entry can
// make larger than what it reads; each is held to maxBytes.
type budget struct {
	maxBytes, maxEntries int64
	read, written        int64
	entries              int64
}

func (b *budget) sizeError(layer digest.Digest) error {
	return fmt.Errorf("layer %s: the image's layers unpack to more than %d bytes, the %s limit: %w",
		layer, b.maxBytes, keyMaxUnpackedSize, errdefs.ErrInvalidArgument)
}

// layerStream is a layer's uncompressed bytes as unpacking reads them: it
// stops, for good, at the budget or when ctx ends, so a decompression bomb
// is never read further than either allows.
type layerStream struct {
	ctx   context.Context
	r     io.Reader
	b     *budget
	layer digest.Digest
	err   error // what stopped it
}

func (l *layerStream) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	if err := l.ctx.Err(); err != nil {
		l.err = fmt.Errorf("layer %s: %w", l.layer, err)
		return 0, l.err
	}
	n, err := l.r.Read(p)
	if l.b.read += int64(n); l.b.read > l.b.maxBytes {
		l.err = l.b.sizeError(l.layer)
		return 0, l.err
	}
	return n, err
}

// openLayer opens a tar or tar+gzip layer (gzip told by its magic, as
// containerd's decompression does) as a stream counted against b.
func openLayer(ctx context.Context, cs content.Provider, desc ocispec.Descriptor, b *budget) (*layerStream, func(), error) {
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return nil, nil, fmt.Errorf("open layer %s: %w", desc.Digest, err)
	}
	br := bufio.NewReaderSize(content.NewReader(ra), 64<<10)
	var r io.Reader = br
	closeAll := func() { ra.Close() }
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			ra.Close()
			return nil, nil, fmt.Errorf("layer %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
		}
		r = gz
		closeAll = func() { gz.Close(); ra.Close() }
	}
	return &layerStream{ctx: ctx, r: r, b: b, layer: desc.Digest}, closeAll, nil
}

// applyLayer reads one layer, checking that it uncompresses to diffID,
// and with a non-nil a writes its entries into a's tree. Without one it
// only checks the layer (an image whose files are already unpacked).
func applyLayer(ctx context.Context, cs content.Provider, desc ocispec.Descriptor, diffID digest.Digest, a *applier, b *budget) error {
	ls, done, err := openLayer(ctx, cs, desc, b)
	if err != nil {
		return err
	}
	defer done()
	digester := diffID.Algorithm().Digester()
	r := io.TeeReader(ls, digester.Hash())
	// stopped gives the budget or the context, when either stopped the
	// stream, precedence over what the tar reader made of it.
	stopped := func(err error) error {
		if ls.err != nil {
			return ls.err
		}
		return err
	}
	if a != nil {
		tr := tar.NewReader(r)
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return stopped(fmt.Errorf("layer %s is not a readable tar: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument))
			}
			if b.entries++; b.entries > b.maxEntries {
				return fmt.Errorf("layer %s: the image's layers hold more than %d entries, the %s limit: %w",
					desc.Digest, b.maxEntries, keyMaxUnpackedEntries, errdefs.ErrInvalidArgument)
			}
			if isRegular(hdr.Typeflag) && hdr.Size > b.maxBytes-b.written {
				return b.sizeError(desc.Digest)
			}
			n, err := a.apply(hdr, tr)
			b.written += n
			if err != nil {
				return stopped(err)
			}
		}
	}
	// The diff ID covers the whole stream, past the tar's end too.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return stopped(fmt.Errorf("layer %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument))
	}
	if got := digester.Digest(); got != diffID {
		return fmt.Errorf("layer %s uncompresses to %s, not to the diff_id %s its image config names: %w",
			desc.Digest, got, diffID, errdefs.ErrInvalidArgument)
	}
	return nil
}

// unpackLayers applies a compat image's layers in order into the tree.
func unpackLayers(ctx context.Context, cs content.Provider, m ocispec.Manifest, cfg *ocispec.Image, tree *inroot.Root, b *budget) error {
	for i, l := range m.Layers {
		a := newApplier(tree, l.Digest.String())
		err := applyLayer(ctx, cs, l, cfg.RootFS.DiffIDs[i], a, b)
		a.close()
		if err != nil {
			return err
		}
	}
	return nil
}

// checkLayers checks a compat image's layers against their diff IDs
// without writing anything.
func checkLayers(ctx context.Context, cs content.Provider, m ocispec.Manifest, cfg *ocispec.Image, b *budget) error {
	for i, l := range m.Layers {
		if err := applyLayer(ctx, cs, l, cfg.RootFS.DiffIDs[i], nil, b); err != nil {
			return err
		}
	}
	return nil
}

func isRegular(t byte) bool { return t == tar.TypeReg || t == tar.TypeRegA } //nolint:staticcheck // old tars use TypeRegA
