package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// An image's unpacked files may outlive its record: a container root
// stacks its writable layer over them, an image volume shows them, and
// removing the image must not pull them from under a running container
// (as containerd keeps a container's snapshots when its image goes). A
// hold keeps image ID's files on disk; the last release of an image no
// longer recorded removes them. Holds live in memory: at start-up the
// sandbox manager takes them again for the containers it loads, and only
// then does CollectFilesystems remove what no record and no hold keeps.

// HoldFilesystem returns the directory of img's unpacked files, as
// Filesystem does, and keeps it until ReleaseFilesystem(img.ID).
func (s *Service) HoldFilesystem(ctx context.Context, img *Image) (string, error) {
	if err := s.Hold(ctx, img.ID); err != nil {
		return "", err
	}
	dir, err := s.Filesystem(ctx, img)
	if err != nil {
		s.ReleaseFilesystem(img.ID)
		return "", err
	}
	return dir, nil
}

// Hold keeps image id's unpacked files, if any, until ReleaseFilesystem.
// A removal of the image waits for it (the image's ID lock), so a held
// tree is never half removed.
func (s *Store) Hold(ctx context.Context, id string) error {
	name, err := fsName(id)
	if err != nil {
		return err
	}
	unlock, err := s.ids.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	s.mu.Lock()
	s.holds[name]++
	s.mu.Unlock()
	return nil
}

// ReleaseFilesystem ends one hold of image id's files; the last one of an
// image removed meanwhile removes them.
func (s *Store) ReleaseFilesystem(id string) {
	name, err := fsName(id)
	if err != nil {
		return
	}
	unlock, err := s.ids.lock(context.Background(), id)
	if err != nil {
		return
	}
	defer unlock()
	s.mu.Lock()
	if s.holds[name] > 0 {
		s.holds[name]--
	}
	held := s.holds[name] > 0
	if !held {
		delete(s.holds, name)
	}
	s.mu.Unlock()
	if held {
		return
	}
	if img, err := s.byID(id); err == nil && img == nil {
		os.RemoveAll(filepath.Join(s.fsDir, name))
	}
}

// held says whether a hold keeps the tree called name; with the image's
// ID lock held, no hold begins meanwhile.
func (s *Store) held(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holds[name] > 0
}

// CollectFilesystems removes unpacked trees that no image record and no
// hold keeps: those of images removed while held before a restart. The
// daemon calls it once the holds of loaded containers are taken.
func (s *Store) CollectFilesystems(ctx context.Context) (int, error) {
	recorded, err := s.recordedTrees()
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir(s.fsDir)
	if err != nil {
		return 0, fmt.Errorf("list unpacked images: %w", err)
	}
	var errs []error
	n := 0
	for _, e := range entries {
		if recorded[e.Name()] || s.held(e.Name()) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.fsDir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
