package cri

import (
	"fmt"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// entryCache keeps, for each object a list call answers with, its entry in
// the answer already encoded, for as long as what it lists stays the same.
//
// At 1,000 objects encoding is most of a list call's work: every field of
// every message walked and every string copied from wherever it lies in
// the heap. Kubelet lists every second and objects rarely change, so each
// is encoded once (the kube-apiserver's watch cache serializes an object
// once for all its watchers for the same reason). The answer carries the
// entries as raw wire bytes in its unknown fields, which protobuf writes
// out as they are: the client decodes exactly what encoding the messages
// would have sent.
type entryCache struct {
	// field is the answer's repeated field the entries belong to.
	field protowire.Number

	mu   sync.Mutex
	byID map[string]*encodedEntry
	// gen counts the listings of every object: an entry none has seen since
	// the one before is of an object that has gone.
	gen uint64
	// size is the last such listing's, for the next to allocate at once.
	size int
}

type encodedEntry struct {
	// version is what may change of the object (its state): a different one
	// makes the entry stale.
	version int32
	gen     uint64
	wire    []byte // the field's tag, the length, the message
}

// newEntryCache keeps the entries of resp's repeated message field.
func newEntryCache(resp proto.Message, field protoreflect.Name) *entryCache {
	fd := resp.ProtoReflect().Descriptor().Fields().ByName(field)
	if fd == nil || !fd.IsList() || fd.Message() == nil {
		panic(fmt.Sprintf("%T has no repeated message field %s", resp, field))
	}
	return &entryCache{field: fd.Number(), byID: map[string]*encodedEntry{}}
}

// listing is one list call's use of the cache. A listing of every object
// (no filter) keeps what it encodes and drops what it did not see; a
// filtered one only reads, so that the cache holds no object that has gone.
type listing struct {
	c    *entryCache
	all  bool
	gen  uint64
	seen int
	wire []byte
}

func (c *entryCache) begin(all bool) *listing {
	l := &listing{c: c, all: all}
	if all {
		c.mu.Lock()
		c.gen++
		l.gen = c.gen
		l.wire = make([]byte, 0, c.size+c.size/8)
		c.mu.Unlock()
	}
	return l
}

// cached adds the object's entry if the cache has it at this version, and
// says whether it did; if not, the caller encodes it with add.
func (l *listing) cached(id string, version int32) bool {
	l.c.mu.Lock()
	e := l.c.byID[id]
	ok := e != nil && e.version == version
	if ok {
		l.wire = append(l.wire, e.wire...)
		if l.all {
			e.gen = l.gen
			l.seen++
		}
	}
	l.c.mu.Unlock()
	return ok
}

// add encodes the object's message into the answer, keeping it when the
// listing is of every object.
func (l *listing) add(id string, version int32, m proto.Message) error {
	start := len(l.wire)
	b := protowire.AppendTag(l.wire, l.c.field, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(proto.Size(m)))
	// The sizes were just computed, and nothing changes m meanwhile.
	b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, m)
	if err != nil {
		return err
	}
	l.wire = b
	if l.all {
		e := &encodedEntry{version: version, gen: l.gen, wire: append([]byte(nil), b[start:]...)}
		l.c.mu.Lock()
		l.c.byID[id] = e
		l.c.mu.Unlock()
		l.seen++
	}
	return nil
}

// end puts the entries into resp, and forgets the objects that have gone.
func (l *listing) end(resp proto.Message) {
	resp.ProtoReflect().SetUnknown(l.wire)
	if !l.all {
		return
	}
	l.c.mu.Lock()
	defer l.c.mu.Unlock()
	l.c.size = len(l.wire)
	if l.seen == len(l.c.byID) {
		return
	}
	for id, e := range l.c.byID {
		// Not seen: gone, or come since this listing began (encoded again
		// by the next).
		if e.gen < l.gen {
			delete(l.c.byID, id)
		}
	}
}
