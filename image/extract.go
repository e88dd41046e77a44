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
	"path"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// tarEntry is what the module search keeps of one layer entry.
type tarEntry struct {
	layer    int
	typeflag byte
	linkname string
	size     int64
}

// findCompatModule locates the module of a compat image in its layers and
// returns its path in the image and its bytes. The module is the file the
// entrypoint names (symlinks followed inside the image), else the only
// .wasm file in the layers. Nothing is written to disk by path, so a
// hostile tar cannot place files anywhere; entries that climb out of the
// image root are refused outright.
func findCompatModule(ctx context.Context, cs content.Provider, layers []ocispec.Descriptor, cfg *ocispec.Image, maxSize int64) (string, []byte, error) {
	entries := map[string]tarEntry{}
	// Later layers override earlier ones, so walk them top-down and keep the
	// first sight of each path.
	for i := len(layers) - 1; i >= 0; i-- {
		err := walkLayer(ctx, cs, layers[i], cfg.RootFS.DiffIDs[i], func(name string, hdr *tar.Header, _ io.Reader) (bool, error) {
			if _, seen := entries[name]; !seen {
				entries[name] = tarEntry{layer: i, typeflag: hdr.Typeflag, linkname: hdr.Linkname, size: hdr.Size}
			}
			return false, nil
		})
		if err != nil {
			return "", nil, err
		}
	}

	target := ""
	if ep := cfg.Config.Entrypoint; len(ep) > 0 {
		target = ep[0]
	} else if cmd := cfg.Config.Cmd; len(cmd) > 0 && strings.HasSuffix(cmd[0], ".wasm") {
		target = cmd[0]
	}
	var modPath string
	if target != "" {
		p, err := resolveInImage(entries, absInImage(cfg.Config.WorkingDir, target))
		if err != nil {
			return "", nil, err
		}
		modPath = p
	} else {
		var found []string
		for name, e := range entries {
			if strings.HasSuffix(name, ".wasm") && isRegular(e.typeflag) {
				found = append(found, name)
			}
		}
		if len(found) != 1 {
			return "", nil, fmt.Errorf("compat image has no entrypoint and %d .wasm files (%s); name the module in the entrypoint: %w",
				len(found), strings.Join(found, ", "), errdefs.ErrInvalidArgument)
		}
		modPath = found[0]
	}

	e := entries[modPath]
	if e.size > maxSize {
		return "", nil, fmt.Errorf("module %s is %d bytes, over the %d-byte limit (image.max_layer_size): %w", modPath, e.size, maxSize, errdefs.ErrInvalidArgument)
	}
	var module []byte
	// Read again without hashing: the index pass checked this layer.
	err := walkLayer(ctx, cs, layers[e.layer], "", func(name string, _ *tar.Header, r io.Reader) (bool, error) {
		if name != modPath {
			return false, nil
		}
		b, err := io.ReadAll(io.LimitReader(r, maxSize+1))
		if err != nil {
			return false, err
		}
		module = b
		return true, nil
	})
	if err != nil {
		return "", nil, err
	}
	if module == nil {
		return "", nil, fmt.Errorf("module %s vanished from layer %s: %w", modPath, layers[e.layer].Digest, errdefs.ErrInvalidArgument)
	}
	return modPath, module, nil
}

func isRegular(t byte) bool { return t == tar.TypeReg || t == tar.TypeRegA } //nolint:staticcheck // old tars use TypeRegA

// absInImage makes p absolute against dir, as an image entrypoint is.
func absInImage(dir, p string) string {
	if !path.IsAbs(p) {
		p = path.Join("/", dir, p)
	}
	return path.Clean(p)
}

// resolveInImage follows symlinks inside the image until a regular file.
func resolveInImage(entries map[string]tarEntry, p string) (string, error) {
	orig := p
	for hops := 0; hops < 16; hops++ {
		e, ok := entries[p]
		if !ok {
			return "", fmt.Errorf("the entrypoint names %s, which is not in the image layers: %w", orig, errdefs.ErrInvalidArgument)
		}
		switch {
		case isRegular(e.typeflag):
			return p, nil
		case e.typeflag == tar.TypeSymlink:
			p = absInImage(path.Dir(p), e.linkname)
		case e.typeflag == tar.TypeLink:
			p = absInImage("/", e.linkname)
		default:
			return "", fmt.Errorf("the entrypoint %s is not a regular file in the image: %w", orig, errdefs.ErrInvalidArgument)
		}
	}
	return "", fmt.Errorf("the entrypoint %s is a symlink loop: %w", orig, errdefs.ErrInvalidArgument)
}

// walkLayer calls fn for each entry of a tar or tar+gzip layer with the
// entry's cleaned absolute path, until fn says it is done. With a diffID,
// the whole uncompressed layer is hashed as it is read and must match it:
// a layer is only ever used as the content its image config names.
func walkLayer(ctx context.Context, cs content.Provider, desc ocispec.Descriptor, diffID digest.Digest, fn func(name string, hdr *tar.Header, r io.Reader) (done bool, err error)) error {
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return fmt.Errorf("open layer %s: %w", desc.Digest, err)
	}
	defer ra.Close()
	br := bufio.NewReader(content.NewReader(ra))
	var r io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("layer %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
		}
		defer gz.Close()
		r = gz
	}
	var digester digest.Digester
	if diffID != "" {
		digester = diffID.Algorithm().Digester()
		r = io.TeeReader(r, digester.Hash())
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("layer %s is not a readable tar: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
		}
		if escapesRoot(hdr.Name) || (hdr.Typeflag == tar.TypeLink && escapesRoot(hdr.Linkname)) {
			return fmt.Errorf("layer %s: entry %q climbs out of the image root: %w", desc.Digest, hdr.Name, errdefs.ErrInvalidArgument)
		}
		done, err := fn(path.Clean("/"+hdr.Name), hdr, tr)
		if err != nil || done {
			return err
		}
	}
	if digester == nil {
		return nil
	}
	// The diff ID covers the whole stream, past the tar's end too.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("layer %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	if got := digester.Digest(); got != diffID {
		return fmt.Errorf("layer %s uncompresses to %s, not to the diff_id %s its image config names: %w",
			desc.Digest, got, diffID, errdefs.ErrInvalidArgument)
	}
	return nil
}

// escapesRoot is true for a tar name with a ".." element.
func escapesRoot(name string) bool {
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return true
		}
	}
	return false
}
