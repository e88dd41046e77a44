package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Filesystem returns a directory holding the image's files, for image
// volumes: a compat image's layers applied in order (whiteouts honoured),
// or an artifact's module alone at /<name>.wasm. Each image is unpacked
// once; the directory is meant to be mounted read-only.
func (s *Service) Filesystem(ctx context.Context, img *Image) (string, error) {
	dir := filepath.Join(s.fsDir, strings.TrimPrefix(img.ID, "sha256:"))
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	_, err, _ := s.unpacks.Do(img.ID, func() (any, error) {
		if _, err := os.Stat(dir); err == nil {
			return nil, nil
		}
		if err := os.MkdirAll(s.fsDir, 0o755); err != nil {
			return nil, err
		}
		tmp, err := os.MkdirTemp(s.fsDir, ".unpacking-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		if err := s.unpack(ctx, img, tmp); err != nil {
			return nil, err
		}
		// Rename last, so a crash never leaves a half-unpacked image.
		return nil, os.Rename(tmp, dir)
	})
	if err != nil {
		return "", fmt.Errorf("unpack image %s: %w", img.ID, err)
	}
	return dir, nil
}

func (s *Service) unpack(ctx context.Context, img *Image, root string) error {
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	if img.Format == FormatArtifact {
		module, err := s.ReadModule(ctx, img)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(root, path.Base(img.Module.Name)+".wasm"), module, 0o755)
	}
	b, err := content.ReadBlob(ctx, s.content, ocispec.Descriptor{Digest: img.ManifestDigest})
	if err != nil {
		return err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	cb, err := content.ReadBlob(ctx, s.content, m.Config)
	if err != nil {
		return err
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return err
	}
	if err := checkDiffIDs(img.ID, m, &cfg); err != nil {
		return err
	}
	for i, layer := range m.Layers {
		if err := walkLayer(ctx, s.content, layer, cfg.RootFS.DiffIDs[i], func(name string, hdr *tar.Header, r io.Reader) (bool, error) {
			return false, applyEntry(root, name, hdr, r)
		}); err != nil {
			return err
		}
	}
	return nil
}

// applyEntry writes one layer entry under root. Entries never reach
// outside root: names climbing out are refused by walkLayer, and no entry
// is written through a symlink an earlier entry made.
func applyEntry(root, name string, hdr *tar.Header, r io.Reader) error {
	rel := strings.TrimPrefix(name, "/")
	if rel == "" {
		return nil
	}
	dir, base := path.Dir(rel), path.Base(rel)
	if err := noSymlinkIn(root, dir); err != nil {
		return err
	}
	target := filepath.Join(root, filepath.FromSlash(rel))
	switch {
	case base == ".wh..wh..opq": // an opaque directory: drop what lower layers put there
		entries, _ := os.ReadDir(filepath.Dir(target))
		for _, e := range entries {
			os.RemoveAll(filepath.Join(filepath.Dir(target), e.Name()))
		}
		return nil
	case strings.HasPrefix(base, ".wh."):
		return os.RemoveAll(filepath.Join(filepath.Dir(target), strings.TrimPrefix(base, ".wh.")))
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	mode := os.FileMode(hdr.Mode) & os.ModePerm
	switch hdr.Typeflag {
	case tar.TypeDir:
		if fi, err := os.Lstat(target); err == nil && !fi.IsDir() {
			os.Remove(target)
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
		return os.Chmod(target, mode|0o100)
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old tars use TypeRegA
		os.RemoveAll(target)
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	case tar.TypeSymlink:
		os.RemoveAll(target)
		return os.Symlink(hdr.Linkname, target)
	case tar.TypeLink:
		if err := noSymlinkIn(root, path.Dir(strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/"))); err != nil {
			return err
		}
		os.RemoveAll(target)
		return os.Link(filepath.Join(root, filepath.FromSlash(path.Clean("/"+hdr.Linkname))), target)
	}
	return nil // devices, fifos: nothing a Wasm module can use
}

// noSymlinkIn refuses a relative directory whose path, under root, passes
// through a symlink.
func noSymlinkIn(root, dir string) error {
	p := root
	for _, el := range strings.Split(dir, "/") {
		if el == "" || el == "." {
			continue
		}
		p = filepath.Join(p, el)
		fi, err := os.Lstat(p)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("layer entry under %s goes through a symlink: %w", dir, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}
