package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

var (
	bucketImages = []byte("images")     // image ID -> Image (JSON)
	bucketRefs   = []byte("image-refs") // repo tag or repo digest -> image ID
)

// Store keeps image metadata in bbolt and image content in containerd's
// local content store. Metadata is written only after every blob of an
// image is committed, so a crash mid-pull leaves no half image behind.
type Store struct {
	db         *bolt.DB
	content    content.Store
	contentDir string

	// leases counts blobs an unfinished pull relies on, so that removing
	// another image never deletes content a pull has just fetched.
	mu     sync.Mutex
	leases map[digest.Digest]int
	// holds counts, by tree name, what keeps an image's unpacked files
	// (holds.go).
	holds map[string]int
	// fsDir holds images' unpacked files, a directory per image ID.
	fsDir string
	// ids serializes what writes one image ID's record and files: a pull
	// unpacking and recording it, Filesystem unpacking it, Remove.
	ids idLocks
	// deleted, when set, is told each blob deleted (Options.Deleted).
	deleted func(digest.Digest)
	// decoded saves Get from decoding records and references again.
	decoded *decoded
}

// HasBlob says whether the store holds blob d.
func (s *Store) HasBlob(ctx context.Context, d digest.Digest) bool {
	_, err := s.content.Info(ctx, d)
	return err == nil
}

// deleteBlob deletes a blob no image holds and says so.
func (s *Store) deleteBlob(ctx context.Context, d digest.Digest) error {
	if err := s.content.Delete(ctx, d); err != nil {
		return err
	}
	if s.deleted != nil {
		s.deleted(d)
	}
	return nil
}

// NewStore opens the store with content under contentDir and metadata in db.
func NewStore(db *bolt.DB, contentDir string) (*Store, error) {
	cs, err := local.NewStore(contentDir)
	if err != nil {
		return nil, fmt.Errorf("open content store: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketImages, bucketRefs} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("init image metadata: %w", err)
	}
	return &Store{db: db, content: cs, contentDir: contentDir, leases: map[digest.Digest]int{}, holds: map[string]int{}, ids: idLocks{m: map[string]*idLock{}}, decoded: newDecoded()}, nil
}

// idLocks are per-image-ID locks that a waiter can give up on.
type idLocks struct {
	mu sync.Mutex
	m  map[string]*idLock
}

type idLock struct {
	ch   chan struct{}
	refs int
}

// lock takes id's lock, or fails when ctx ends first.
func (l *idLocks) lock(ctx context.Context, id string) (unlock func(), err error) {
	l.mu.Lock()
	e := l.m[id]
	if e == nil {
		e = &idLock{ch: make(chan struct{}, 1)}
		l.m[id] = e
	}
	e.refs++
	l.mu.Unlock()
	drop := func() {
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.m, id)
		}
		l.mu.Unlock()
	}
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; drop() }, nil
	case <-ctx.Done():
		drop()
		return nil, ctx.Err()
	}
}

// fsPath is the directory holding image id's unpacked files.
func (s *Store) fsPath(id string) (string, error) {
	name, err := fsName(id)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.fsDir, name), nil
}

// fsName is an image's directory name in fsDir: the hex of a sha256 ID,
// "algorithm-hex" of another.
func fsName(id string) (string, error) {
	d, err := digest.Parse(id)
	if err != nil {
		return "", fmt.Errorf("image ID %q: %v: %w", id, err, errdefs.ErrInvalidArgument)
	}
	if d.Algorithm() == digest.SHA256 {
		return d.Encoded(), nil
	}
	return d.Algorithm().String() + "-" + d.Encoded(), nil
}

// byID returns the image recorded under id, or nil.
func (s *Store) byID(id string) (*Image, error) {
	var img *Image
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		img, err = getImage(tx, id)
		if errdefs.IsNotFound(err) {
			img, err = nil, nil
		}
		return err
	})
	return img, err
}

// setUnpacked records that image id's files are unpacked, counting them
// in its size, unless it is gone or already counted them.
func (s *Store) setUnpacked(id string, u Unpacked) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		img, err := getImage(tx, id)
		if errdefs.IsNotFound(err) {
			return nil
		}
		if err != nil || img.Unpacked != nil {
			return err
		}
		img.Unpacked = &u
		img.Size += u.Bytes
		return putImage(tx, img)
	})
}

// Content is the content store blobs are fetched into.
func (s *Store) Content() content.Store { return s.content }

// Get finds an image by repo tag, repo digest, image ID or unique ID prefix.
func (s *Store) Get(ref string) (*Image, error) {
	var img *Image
	err := s.db.View(func(tx *bolt.Tx) error {
		id, err := s.resolve(tx, ref)
		if err != nil {
			return err
		}
		img, err = s.decoded.image(tx, id)
		return err
	})
	return img, err
}

func resolveID(tx *bolt.Tx, ref string) (string, error) {
	return resolveIDWith(tx, ref, normalName)
}

// resolve is resolveID with references normalized once per spelling.
func (s *Store) resolve(tx *bolt.Tx, ref string) (string, error) {
	return resolveIDWith(tx, ref, s.decoded.normalName)
}

// normalName is ref's normal form, or "" when it does not parse.
func normalName(ref string) string {
	named, err := ParseReference(ref)
	if err != nil {
		return ""
	}
	return named.String()
}

func resolveIDWith(tx *bolt.Tx, ref string, normal func(string) string) (string, error) {
	images := tx.Bucket(bucketImages)
	for _, id := range []string{ref, "sha256:" + ref} {
		if images.Get([]byte(id)) != nil {
			return id, nil
		}
	}
	if name := normal(ref); name != "" {
		if id := tx.Bucket(bucketRefs).Get([]byte(name)); id != nil {
			return string(id), nil
		}
	}
	// A unique prefix of the hex ID, as crictl users type it.
	if isHexPrefix(ref) {
		var found []string
		prefix := []byte("sha256:" + ref)
		c := images.Cursor()
		for k, _ := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, _ = c.Next() {
			found = append(found, string(k))
		}
		switch len(found) {
		case 1:
			return found[0], nil
		case 0:
		default:
			return "", fmt.Errorf("image ID prefix %q matches %d images: %w", ref, len(found), errdefs.ErrInvalidArgument)
		}
	}
	return "", fmt.Errorf("image %q: %w", ref, errdefs.ErrNotFound)
}

func isHexPrefix(s string) bool {
	if len(s) < 4 || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

func getImage(tx *bolt.Tx, id string) (*Image, error) {
	b := tx.Bucket(bucketImages).Get([]byte(id))
	if b == nil {
		return nil, fmt.Errorf("image %q: %w", id, errdefs.ErrNotFound)
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, fmt.Errorf("decode image %s: %w", id, err)
	}
	return &img, nil
}

func putImage(tx *bolt.Tx, img *Image) error {
	b, err := json.Marshal(img)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketImages).Put([]byte(img.ID), b)
}

// List returns every image, ordered by ID.
func (s *Store) List() ([]*Image, error) {
	var out []*Image
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketImages).ForEach(func(k, _ []byte) error {
			img, err := getImage(tx, string(k))
			if err != nil {
				return err
			}
			out = append(out, img)
			return nil
		})
	})
	return out, err
}

// record stores img under its tags and digests. A tag that named another
// image moves to this one, as a re-pulled tag does in containerd. sizes are
// the bytes of img's blobs.
//
// An image already recorded under img.ID gains img's names and blobs (the
// same image pulled through another manifest, e.g. with other compression)
// only when it runs the same module: different contents are never merged
// under one ID, so that every name runs the module its own manifest
// references.
func (s *Store) record(img *Image, sizes map[digest.Digest]int64) (*Image, error) {
	var saved *Image
	err := s.db.Update(func(tx *bolt.Tx) error {
		refs := tx.Bucket(bucketRefs)
		merged := img
		if old, err := getImage(tx, img.ID); err == nil {
			if err := sameContent(old, img); err != nil {
				return err
			}
			merged = old
			merged.RepoTags = union(old.RepoTags, img.RepoTags)
			merged.RepoDigests = union(old.RepoDigests, img.RepoDigests)
			merged.PulledAt = img.PulledAt
			if merged.Unpacked == nil && img.Unpacked != nil {
				merged.Unpacked = img.Unpacked
				merged.Size += img.Unpacked.Bytes
			}
			for _, d := range img.Blobs {
				if !slices.Contains(merged.Blobs, d) {
					merged.Blobs = append(merged.Blobs, d)
					merged.Size += sizes[d]
				}
			}
		}
		for _, ref := range append(slices.Clone(img.RepoTags), img.RepoDigests...) {
			prev := refs.Get([]byte(ref))
			if prev != nil && string(prev) != img.ID {
				if err := dropRef(tx, string(prev), ref); err != nil {
					return err
				}
			}
			if err := refs.Put([]byte(ref), []byte(img.ID)); err != nil {
				return err
			}
		}
		saved = merged
		return putImage(tx, merged)
	})
	return saved, err
}

// sameContent refuses to record img under the ID of an image with another
// module (or layout). Compat images share an ID only when their configs,
// and so the diff IDs their layers are checked against, are byte-identical:
// then they hold the same files. What is left is a blob that is both an
// artifact's manifest and a compat image's config, or a bug.
func sameContent(old, img *Image) error {
	if old.Format == img.Format && old.Module.Digest == img.Module.Digest {
		return nil
	}
	running := ""
	if img.Module.Digest != "" {
		running = " running module " + img.Module.Digest.String()
	}
	return fmt.Errorf("image ID %s is already %s (a %s image running module %s); manifest %s would make it a %s image%s: refusing to merge different images under one ID: %w",
		img.ID, strings.Join(append(slices.Clone(old.RepoTags), old.RepoDigests...), ", "), old.Format, old.Module.Digest,
		img.ManifestDigest, img.Format, running, errdefs.ErrConflict)
}

// dropRef takes ref off image id, leaving the image itself in place.
func dropRef(tx *bolt.Tx, id, ref string) error {
	img, err := getImage(tx, id)
	if err != nil {
		return err
	}
	img.RepoTags = slices.DeleteFunc(img.RepoTags, func(s string) bool { return s == ref })
	img.RepoDigests = slices.DeleteFunc(img.RepoDigests, func(s string) bool { return s == ref })
	return putImage(tx, img)
}

func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// Remove deletes the image ref names, with all its tags and digests, its
// unpacked files, and frees content no other image uses. Removing an
// absent image is not an error (CRI RemoveImage is idempotent).
func (s *Store) Remove(ctx context.Context, ref string) error {
	for {
		var id string
		err := s.db.View(func(tx *bolt.Tx) error {
			var err error
			id, err = resolveID(tx, ref)
			return err
		})
		if errdefs.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		unlock, err := s.ids.lock(ctx, id)
		if err != nil {
			return err
		}
		done, err := s.remove(ctx, ref, id)
		unlock()
		if done || err != nil {
			return err
		}
		// ref was moved to another image meanwhile: remove that one.
	}
}

// remove is Remove with image id's lock held. It does nothing, and says
// so, when ref no longer names id.
func (s *Store) remove(ctx context.Context, ref, id string) (bool, error) {
	var removed *Image
	err := s.db.Update(func(tx *bolt.Tx) error {
		now, err := resolveID(tx, ref)
		if errdefs.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if now != id {
			return errMoved
		}
		if removed, err = getImage(tx, id); err != nil {
			return err
		}
		refs := tx.Bucket(bucketRefs)
		for _, r := range append(slices.Clone(removed.RepoTags), removed.RepoDigests...) {
			if err := refs.Delete([]byte(r)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketImages).Delete([]byte(id))
	})
	if errors.Is(err, errMoved) {
		return false, nil
	}
	if err != nil || removed == nil {
		return true, err
	}
	s.decoded.forget(id)
	if name, err := fsName(removed.ID); err == nil && !s.held(name) {
		// What cannot be removed now is reclaimed when the daemon starts;
		// a held tree goes with its last hold.
		os.RemoveAll(filepath.Join(s.fsDir, name))
	}
	return true, s.free(ctx, removed.Blobs)
}

var errMoved = errors.New("the name moved to another image")

// referencedBlobs are the blobs some image record holds.
func referencedBlobs(tx *bolt.Tx) (map[digest.Digest]bool, error) {
	inUse := map[digest.Digest]bool{}
	err := tx.Bucket(bucketImages).ForEach(func(k, _ []byte) error {
		other, err := getImage(tx, string(k))
		if err != nil {
			return err
		}
		for _, d := range other.Blobs {
			inUse[d] = true
		}
		return nil
	})
	return inUse, err
}

// free deletes the blobs of ds that neither an image record nor a pull
// under way holds. What records hold is read with the lease lock held: a
// pull records its image before it lets go of its leases, so a blob is
// either in a record this sees or still leased.
func (s *Store) free(ctx context.Context, ds []digest.Digest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var inUse map[digest.Digest]bool
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		inUse, err = referencedBlobs(tx)
		return err
	})
	if err != nil {
		return err
	}
	for _, d := range ds {
		if inUse[d] || s.leases[d] > 0 {
			continue
		}
		if err := s.deleteBlob(ctx, d); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("free blob %s: %w", d, err)
		}
	}
	return nil
}

// lease marks blobs as in use by a pull until the returned func is called.
func (s *Store) lease(ds ...digest.Digest) (release func()) {
	s.mu.Lock()
	for _, d := range ds {
		s.leases[d]++
	}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		for _, d := range ds {
			if s.leases[d]--; s.leases[d] <= 0 {
				delete(s.leases, d)
			}
		}
		s.mu.Unlock()
	}
}

// ReadModule returns the bytes of img's WebAssembly module.
func (s *Store) ReadModule(ctx context.Context, img *Image) ([]byte, error) {
	return content.ReadBlob(ctx, s.content, ocispec.Descriptor{Digest: img.Module.Digest, Size: img.Module.Size})
}

// Usage is the disk the image store takes: bytes and inodes of its
// content directory and of the images' unpacked files.
type Usage struct {
	Mountpoint string
	Bytes      uint64
	Inodes     uint64
}

// Usage walks the content directory, a file per blob, and adds what the
// image records say their unpacked files take (walking those would cost
// a stat per file of every image, and kubelet's image GC asks every few
// seconds).
func (s *Store) Usage() (Usage, error) {
	u := Usage{Mountpoint: s.contentDir}
	err := filepath.WalkDir(s.contentDir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		u.Inodes++
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				u.Bytes += uint64(fi.Size())
			}
		}
		return nil
	})
	if err != nil {
		return u, err
	}
	imgs, err := s.List()
	for _, img := range imgs {
		if img.Unpacked != nil {
			u.Bytes += uint64(img.Unpacked.Bytes)
			u.Inodes += uint64(img.Unpacked.Inodes)
		}
	}
	return u, err
}
