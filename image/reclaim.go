package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// private makes the content and image-fs directories the daemon's alone:
// blobs, half-written ingests (which containerd's store makes 0666) and
// unpacked files are none of other local users' business, and an
// unpacked image may hold anything, setuid files excepted.
func (s *Store) private() error {
	for _, dir := range []string{s.contentDir, s.fsDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("make %s private: %w", dir, err)
		}
	}
	return nil
}

// reclaimed is what start-up found left behind.
type reclaimed struct {
	ingests, blobs, trees int
	bytes                 int64
}

// reclaim removes what a crash (or an older wasmcri) can leave behind,
// which nothing would ever remove otherwise:
//   - the content store's ingests: downloads no pull will resume;
//   - blobs no image record holds: fetched by a pull that crashed before
//     recording its image;
//   - in image-fs, unpackings a crash interrupted (tempPrefix), and trees
//     of images whose record does not say they were unpacked (a crash
//     between the rename and the record, a tree made by an older wasmcri,
//     unchecked: it is unpacked again when asked for). Trees of images
//     without a record are left to CollectFilesystems: a container may
//     hold one (holds.go).
//
// It must run before the service serves anything: a pull under way holds
// ingests, blobs and trees that no record names yet.
func (s *Store) reclaim(ctx context.Context) (reclaimed, error) {
	var r reclaimed
	statuses, err := s.content.ListStatuses(ctx)
	if err != nil {
		return r, fmt.Errorf("list ingests: %w", err)
	}
	for _, st := range statuses {
		if err := s.content.Abort(ctx, st.Ref); err == nil {
			r.ingests++
			r.bytes += st.Offset
		}
	}
	// What the store cannot even read the status of goes too.
	ingest := filepath.Join(s.contentDir, "ingest")
	left, _ := os.ReadDir(ingest)
	for _, e := range left {
		if err := os.RemoveAll(filepath.Join(ingest, e.Name())); err != nil {
			return r, err
		}
		r.ingests++
	}

	inUse := map[digest.Digest]bool{}
	unpacked := map[string]bool{}
	recorded := map[string]bool{}
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketImages).ForEach(func(k, _ []byte) error {
			img, err := getImage(tx, string(k))
			if err != nil {
				return err
			}
			for _, d := range img.Blobs {
				inUse[d] = true
			}
			if name, err := fsName(img.ID); err == nil {
				recorded[name] = true
				unpacked[name] = img.Unpacked != nil
			}
			return nil
		})
	})
	if err != nil {
		// Without every record, what they hold is unknown: keep it all.
		return r, fmt.Errorf("read image records: %w", err)
	}
	var orphans []content.Info
	err = s.content.Walk(ctx, func(info content.Info) error {
		if !inUse[info.Digest] {
			orphans = append(orphans, info)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) { // no blob yet
		return r, fmt.Errorf("list blobs: %w", err)
	}
	for _, info := range orphans {
		if err := s.deleteBlob(ctx, info.Digest); err == nil {
			r.blobs++
			r.bytes += info.Size
		}
	}

	entries, err := os.ReadDir(s.fsDir)
	if err != nil {
		return r, fmt.Errorf("list unpacked images: %w", err)
	}
	for _, e := range entries {
		// Trees of no recorded image may be held by containers; they are
		// CollectFilesystems' once the holds are known.
		name := e.Name()
		if stale := strings.HasPrefix(name, tempPrefix) || recorded[name] && !unpacked[name]; !stale {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.fsDir, e.Name())); err != nil {
			return r, err
		}
		r.trees++
	}
	return r, nil
}

// recordedTrees are the tree names of every recorded image.
func (s *Store) recordedTrees() (map[string]bool, error) {
	out := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketImages).ForEach(func(k, _ []byte) error {
			if name, err := fsName(string(k)); err == nil {
				out[name] = true
			}
			return nil
		})
	})
	return out, err
}
