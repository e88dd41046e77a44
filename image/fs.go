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
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/internal/inroot"
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
		tree, err := inroot.Open(root)
		if err != nil {
			return err
		}
		defer tree.Close()
		return tree.WriteFile(path.Base(img.Module.Name)+".wasm", module, 0o755)
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
	tree, err := inroot.Open(root)
	if err != nil {
		return err
	}
	defer tree.Close()
	for i, layer := range m.Layers {
		a := newApplier(tree, layer.Digest.String())
		if err := walkLayer(ctx, s.content, layer, cfg.RootFS.DiffIDs[i], func(_ string, hdr *tar.Header, r io.Reader) (bool, error) {
			_, err := a.apply(hdr, r)
			return false, err
		}); err != nil {
			return err
		}
	}
	return nil
}
