package image

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/internal/inroot"
)

// tempPrefix names the directories an unpacking works in, reclaimed at
// start-up if a crash left one.
const tempPrefix = ".unpacking-"

// Filesystem returns the directory holding the image's files, for
// container roots and image volumes: a compat image's layers applied in
// order (whiteouts honoured), or an artifact's module alone at
// /<name>.wasm. Compat images are unpacked when pulled; an artifact, an
// image recorded before that, or one whose directory went missing is
// unpacked here, once, under the same checks and limits as a pull. The
// directory is meant to be used read-only.
func (s *Service) Filesystem(ctx context.Context, img *Image) (string, error) {
	dir, err := s.fsPath(img.ID)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	unlock, err := s.ids.lock(ctx, img.ID)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	cur, err := s.byID(img.ID)
	if err != nil {
		return "", err
	}
	if cur == nil {
		return "", fmt.Errorf("image %s: %w", img.ID, errdefs.ErrNotFound)
	}
	if err := s.unpackRecorded(ctx, cur, dir); err != nil {
		return "", fmt.Errorf("unpack image %s: %w", img.ID, err)
	}
	return dir, nil
}

// unpackRecorded unpacks a recorded image into dir, with its ID lock held.
func (s *Service) unpackRecorded(ctx context.Context, img *Image, dir string) error {
	var st treeStats
	err := s.unpackInto(dir, func(tree *inroot.Root) error {
		if img.Format == FormatArtifact {
			module, err := s.ReadModule(ctx, img)
			if err != nil {
				return err
			}
			return tree.WriteFile(path.Base(img.Module.Name)+".wasm", module, 0o755)
		}
		m, cfg, err := s.readCompat(ctx, img)
		if err != nil {
			return err
		}
		if err := unpackLayers(ctx, s.content, m, cfg, tree, s.budget()); err != nil {
			return err
		}
		if st, err = statTree(tree.Path()); err != nil {
			return err
		}
		_, module, err := findModule(tree, cfg, st, s.opts.MaxModuleSize)
		if err != nil {
			return err
		}
		// The files must hold the module the image was recorded with.
		if got := digestOf(module); got != img.Module.Digest {
			return fmt.Errorf("its layers hold module %s, not the %s it was pulled with: %w", got, img.Module.Digest, errdefs.ErrFailedPrecondition)
		}
		return nil
	}, &st)
	if err != nil {
		return err
	}
	return s.setUnpacked(img.ID, st.Unpacked)
}

// readCompat reads back a recorded compat image's manifest and config.
func (s *Service) readCompat(ctx context.Context, img *Image) (ocispec.Manifest, *ocispec.Image, error) {
	var m ocispec.Manifest
	var cfg ocispec.Image
	b, err := content.ReadBlob(ctx, s.content, ocispec.Descriptor{Digest: img.ManifestDigest})
	if err != nil {
		return m, nil, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, nil, fmt.Errorf("manifest %s: %v: %w", img.ManifestDigest, err, errdefs.ErrInvalidArgument)
	}
	if b, err = content.ReadBlob(ctx, s.content, m.Config); err != nil {
		return m, nil, err
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return m, nil, fmt.Errorf("config %s: %v: %w", m.Config.Digest, err, errdefs.ErrInvalidArgument)
	}
	return m, &cfg, checkDiffIDs(img.ID, m, &cfg)
}

// unpackInto fills dir by fill, crash-safely: in a temporary directory
// beside it, renamed into place last, so that dir either holds all of an
// image or does not exist. A dir already there is replaced. Unless fill
// measured the tree into st already, unpackInto does.
func (s *Store) unpackInto(dir string, fill func(tree *inroot.Root) error, st *treeStats) error {
	if err := os.MkdirAll(s.fsDir, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(s.fsDir, tempPrefix)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	tree, err := inroot.Open(tmp)
	if err != nil {
		return err
	}
	defer tree.Close()
	if err := fill(tree); err != nil {
		return err
	}
	// The tree is a container's "/"; image-fs keeps others out.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if st.Inodes == 0 {
		if *st, err = statTree(tmp); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	return nil
}

// treeStats is what an unpacked tree takes on disk.
type treeStats struct {
	Unpacked
	// wasm are the first .wasm regular files found, and nWasm how many
	// there are in all.
	wasm  []string
	nWasm int
}

// statTree measures an unpacked tree (regular file bytes and inodes, hard
// links counted once) and finds its .wasm files. The tree is the daemon's
// own, private to it; nothing is followed.
func statTree(dir string) (treeStats, error) {
	var st treeStats
	linked := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok && sys.Nlink > 1 && !fi.IsDir() {
			if linked[sys.Ino] {
				return nil
			}
			linked[sys.Ino] = true
		}
		st.Inodes++
		if fi.Mode().IsRegular() {
			st.Bytes += fi.Size()
			if strings.HasSuffix(p, ".wasm") {
				if st.nWasm++; len(st.wasm) < 8 {
					rel, _ := filepath.Rel(dir, p)
					st.wasm = append(st.wasm, "/"+filepath.ToSlash(rel))
				}
			}
		}
		return nil
	})
	return st, err
}
