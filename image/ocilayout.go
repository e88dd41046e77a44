package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Layout is an OCI image layout held in memory: its index and its blobs.
// It is what `wasmcri image import` sends, and a fetcher that Import pulls
// from instead of a registry.
type Layout struct {
	Index ocispec.Index
	Blobs map[digest.Digest][]byte
}

// WriteTar writes the layout as an OCI layout tarball.
func (l *Layout) WriteTar(w io.Writer) error {
	tw := tar.NewWriter(w)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	idx, err := json.Marshal(l.Index)
	if err != nil {
		return err
	}
	if err := put(ocispec.ImageLayoutFile, []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := put(ocispec.ImageIndexFile, idx); err != nil {
		return err
	}
	digests := make([]string, 0, len(l.Blobs))
	for d := range l.Blobs {
		digests = append(digests, d.String())
	}
	sort.Strings(digests)
	for _, d := range digests {
		dg := digest.Digest(d)
		if err := put(path.Join(ocispec.ImageBlobsDir, dg.Algorithm().String(), dg.Encoded()), l.Blobs[dg]); err != nil {
			return err
		}
	}
	return tw.Close()
}

// ReadLayoutTar reads an OCI layout tarball of at most limit bytes of
// blobs. Every blob is checked against its name; entries outside the
// layout's files are refused.
func ReadLayoutTar(r io.Reader, limit int64) (*Layout, error) {
	l := &Layout{Blobs: map[digest.Digest][]byte{}}
	var total int64
	var haveIndex bool
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("OCI layout: not a readable tar: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		if hdr.Typeflag == tar.TypeDir || name == ocispec.ImageLayoutFile || name == "" {
			continue
		}
		if !isRegular(hdr.Typeflag) {
			return nil, fmt.Errorf("OCI layout: entry %q is not a regular file: %w", hdr.Name, errdefs.ErrInvalidArgument)
		}
		if total += hdr.Size; total > limit {
			return nil, fmt.Errorf("OCI layout: over %d bytes: %w", limit, errdefs.ErrInvalidArgument)
		}
		data, err := io.ReadAll(io.LimitReader(tr, hdr.Size))
		if err != nil {
			return nil, err
		}
		switch {
		case name == ocispec.ImageIndexFile:
			if err := json.Unmarshal(data, &l.Index); err != nil {
				return nil, fmt.Errorf("OCI layout: index.json: %v: %w", err, errdefs.ErrInvalidArgument)
			}
			haveIndex = true
		case strings.HasPrefix(name, ocispec.ImageBlobsDir+"/"):
			parts := strings.Split(name, "/")
			if len(parts) != 3 {
				return nil, fmt.Errorf("OCI layout: unexpected blob path %q: %w", hdr.Name, errdefs.ErrInvalidArgument)
			}
			d := digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[2])
			if err := d.Validate(); err != nil {
				return nil, fmt.Errorf("OCI layout: blob %q: %v: %w", hdr.Name, err, errdefs.ErrInvalidArgument)
			}
			if d.Algorithm().FromBytes(data) != d {
				return nil, fmt.Errorf("OCI layout: blob %s does not match its content: %w", d, errdefs.ErrInvalidArgument)
			}
			l.Blobs[d] = data
		default:
			return nil, fmt.Errorf("OCI layout: unexpected entry %q: %w", hdr.Name, errdefs.ErrInvalidArgument)
		}
	}
	if !haveIndex {
		return nil, fmt.Errorf("OCI layout: no index.json: %w", errdefs.ErrInvalidArgument)
	}
	return l, nil
}

// Fetch serves a blob, as a registry fetcher would.
func (l *Layout) Fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	b, ok := l.Blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s is not in the layout: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// root picks the image to import: the one whose ref.name annotation is
// named's tag or whole name, or the only one.
func (l *Layout) root(named reference.Named) (ocispec.Descriptor, error) {
	var names []string
	for _, m := range l.Index.Manifests {
		n := m.Annotations[ocispec.AnnotationRefName]
		if n == named.String() || n == reference.FamiliarString(named) {
			return m, nil
		}
		if tagged, ok := named.(reference.Tagged); ok && n == tagged.Tag() {
			return m, nil
		}
		names = append(names, n)
	}
	if len(l.Index.Manifests) == 1 {
		return l.Index.Manifests[0], nil
	}
	return ocispec.Descriptor{}, fmt.Errorf("OCI layout holds %d images (%s) and none is named %s: %w",
		len(l.Index.Manifests), strings.Join(names, ", "), named, errdefs.ErrInvalidArgument)
}

// Import records the image of layout under ref without any registry: the
// blobs go through the same checks as a pull's (digests, sizes, Wasm
// layout, module validation).
func (s *Service) Import(ctx context.Context, ref string, l *Layout) (*Image, error) {
	named, err := ParseReference(ref)
	if err != nil {
		return nil, err
	}
	root, err := l.root(named)
	if err != nil {
		return nil, err
	}
	root.Annotations = nil
	p := &pull{s: s, ref: named.String(), fetcher: l, cs: s.content}
	img, err := p.run(ctx, named, root)
	p.done(ctx, err)
	if err != nil {
		return nil, err
	}
	s.opts.Logger.Info("imported image", "image", named.String(), "digest", root.Digest, "id", img.ID, "format", img.Format)
	return img, nil
}
