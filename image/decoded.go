package image

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

// decoded keeps what every CreateContainer would otherwise decode again:
// image records (JSON) and the normal form of references (a regular
// expression). A record is served from memory only while its stored bytes
// are the ones it was decoded from, so no write needs to tell the cache.
type decoded struct {
	mu     sync.Mutex
	images map[string]decodedImage
	refs   map[string]string // as given → normal form
}

type decodedImage struct {
	raw []byte
	img *Image
}

// maxDecodedRefs bounds the references remembered; past it the map starts
// again (clients use few distinct spellings).
const maxDecodedRefs = 4096

func newDecoded() *decoded {
	return &decoded{images: map[string]decodedImage{}, refs: map[string]string{}}
}

// image returns image id's record in tx, a copy the caller may change.
func (d *decoded) image(tx *bolt.Tx, id string) (*Image, error) {
	b := tx.Bucket(bucketImages).Get([]byte(id))
	if b == nil {
		return nil, fmt.Errorf("image %q: %w", id, errdefs.ErrNotFound)
	}
	d.mu.Lock()
	e, ok := d.images[id]
	d.mu.Unlock()
	if ok && bytes.Equal(e.raw, b) {
		return e.img.clone(), nil
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, fmt.Errorf("decode image %s: %w", id, err)
	}
	d.mu.Lock()
	// bbolt's bytes live only as long as tx.
	d.images[id] = decodedImage{raw: bytes.Clone(b), img: img.clone()}
	d.mu.Unlock()
	return &img, nil
}

// forget drops image id's record once it is removed.
func (d *decoded) forget(id string) {
	d.mu.Lock()
	delete(d.images, id)
	d.mu.Unlock()
}

// normalName is ref's normal form (ParseReference's String), or "" when
// ref does not parse.
func (d *decoded) normalName(ref string) string {
	d.mu.Lock()
	n, ok := d.refs[ref]
	d.mu.Unlock()
	if ok {
		return n
	}
	if named, err := ParseReference(ref); err == nil {
		n = named.String()
	}
	d.mu.Lock()
	if len(d.refs) >= maxDecodedRefs {
		clear(d.refs)
	}
	d.refs[ref] = n
	d.mu.Unlock()
	return n
}

// clone is a copy of img sharing nothing a caller could change.
func (img *Image) clone() *Image {
	c := *img
	c.RepoTags = slices.Clone(img.RepoTags)
	c.RepoDigests = slices.Clone(img.RepoDigests)
	c.Blobs = slices.Clone(img.Blobs)
	if img.Unpacked != nil {
		u := *img.Unpacked
		c.Unpacked = &u
	}
	c.Entrypoint = slices.Clone(img.Entrypoint)
	c.Cmd = slices.Clone(img.Cmd)
	c.Env = slices.Clone(img.Env)
	c.Labels = maps.Clone(img.Labels)
	c.Annotations = maps.Clone(img.Annotations)
	return &c
}
