package cri

import (
	"fmt"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Kubelet lists every sandbox and container, and their stats, every
// second. At 1,000 containers encoding the answers is most of that work:
// every field of every message walked, every string copied from wherever
// it lies in the heap, and for the stats a dozen small messages per
// container made for the purpose, then left to the garbage collector.
// What an object lists rarely changes, so its encoding is kept (the
// kube-apiserver's watch cache serializes an object once for all its
// watchers for the same reason), and the stats' few changing numbers are
// written straight to the wire (statswire.go). An answer carries these
// bytes in its unknown fields, which protobuf writes out as they are: the
// client decodes exactly what encoding the messages would have sent.

// entryCache keeps each object's encoded bytes for as long as its version
// (what of it may change, such as its state) stays the same. Objects are
// known by their address in the sandbox manager, which is theirs for
// life (and, as a key here, for as long as their entry): cheaper to hash
// than their 64-character IDs, 1,000 times a call.
type entryCache[K comparable] struct {
	mu   sync.Mutex
	byID map[K]*encodedEntry
	// gen counts the passes over every object: an entry the last one did
	// not see is of an object that has gone.
	gen uint64
	// size is the last such pass's answer, for the next to allocate once.
	size int
}

type encodedEntry struct {
	version int32
	gen     uint64
	wire    []byte
}

func newEntryCache[K comparable]() *entryCache[K] {
	return &entryCache[K]{byID: map[K]*encodedEntry{}}
}

// pass is one list call's use of the cache. A pass over every object (no
// filter) keeps what it encodes and forgets what it did not see; a
// filtered one only reads, so that no entry outlives its object.
type pass[K comparable] struct {
	c    *entryCache[K]
	all  bool
	gen  uint64
	seen int
	// wire is the answer's entries so far.
	wire []byte
}

func (c *entryCache[K]) begin(all bool) *pass[K] {
	p := &pass[K]{c: c, all: all}
	if all {
		c.mu.Lock()
		c.gen++
		p.gen = c.gen
		p.wire = make([]byte, 0, c.size+c.size/8)
		c.mu.Unlock()
	}
	return p
}

// get returns the object's bytes if the cache has them at this version.
func (p *pass[K]) get(id K, version int32) ([]byte, bool) {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	e := p.c.byID[id]
	if e == nil || e.version != version {
		return nil, false
	}
	if p.all {
		e.gen = p.gen
		p.seen++
	}
	return e.wire, true
}

// put keeps a copy of the object's bytes, when the pass is over every
// object.
func (p *pass[K]) put(id K, version int32, wire []byte) {
	if !p.all {
		return
	}
	e := &encodedEntry{version: version, gen: p.gen, wire: append([]byte(nil), wire...)}
	p.c.mu.Lock()
	p.c.byID[id] = e
	p.c.mu.Unlock()
	p.seen++
}

// end puts the entries into resp, and finishes.
func (p *pass[K]) end(resp proto.Message) {
	resp.ProtoReflect().SetUnknown(p.wire)
	if p.all {
		p.c.mu.Lock()
		p.c.size = len(p.wire)
		p.c.mu.Unlock()
	}
	p.finish()
}

// finish forgets the objects that have gone.
func (p *pass[K]) finish() {
	if !p.all {
		return
	}
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	if p.seen == len(p.c.byID) {
		return
	}
	for id, e := range p.c.byID {
		// Not seen: gone, or come since this pass began (encoded again by
		// the next).
		if e.gen < p.gen {
			delete(p.c.byID, id)
		}
	}
}

// appendEntry appends m as field f of its parent message.
func appendEntry(b []byte, f protowire.Number, m proto.Message) ([]byte, error) {
	b = protowire.AppendTag(b, f, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(proto.Size(m)))
	// The sizes were just computed, and nothing changes m meanwhile.
	return proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, m)
}

// field is the number of m's field called name.
func field(m proto.Message, name protoreflect.Name) protowire.Number {
	fd := m.ProtoReflect().Descriptor().Fields().ByName(name)
	if fd == nil {
		panic(fmt.Sprintf("%T has no field %s", m, name))
	}
	return fd.Number()
}
