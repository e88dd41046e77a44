package sandbox

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// index holds the live objects of one kind by ID. Its lock is a leaf:
// nothing else is locked while it is held, so it may be taken with an
// object's lock held, never the other way round.
type index[T any] struct {
	kind string
	// created orders the objects; it is fixed at their creation.
	created func(T) time.Time
	mu      sync.RWMutex
	byID    map[string]T
	// ordered is every object, oldest first, made by all when nil and
	// dropped by add and remove: kubelet lists every second, objects come
	// and go far less often.
	ordered []T
}

func newIndex[T any](kind string, created func(T) time.Time) *index[T] {
	return &index[T]{kind: kind, created: created, byID: map[string]T{}}
}

// get finds an object by exact ID or unique prefix, as crictl users type
// truncated IDs.
func (x *index[T]) get(id string) (T, error) {
	var zero T
	if id == "" {
		return zero, fmt.Errorf("%s ID is empty: %w", x.kind, errdefs.ErrInvalidArgument)
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	if v, ok := x.byID[id]; ok {
		return v, nil
	}
	var found string
	for full := range x.byID {
		if strings.HasPrefix(full, id) {
			if found != "" {
				return zero, fmt.Errorf("%s ID prefix %q is ambiguous: %w", x.kind, id, errdefs.ErrInvalidArgument)
			}
			found = full
		}
	}
	if found == "" {
		return zero, fmt.Errorf("%s %q: %w", x.kind, id, errdefs.ErrNotFound)
	}
	return x.byID[found], nil
}

// has says whether an object has exactly this ID.
func (x *index[T]) has(id string) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.byID[id]
	return ok
}

func (x *index[T]) add(id string, v T) {
	x.mu.Lock()
	x.byID[id] = v
	x.ordered = nil
	x.mu.Unlock()
}

func (x *index[T]) remove(id string) {
	x.mu.Lock()
	delete(x.byID, id)
	x.ordered = nil
	x.mu.Unlock()
}

// all returns every object, oldest first. The slice is shared by every
// caller until the next add or remove: read it, never write to it.
func (x *index[T]) all() []T {
	x.mu.RLock()
	out := x.ordered
	x.mu.RUnlock()
	if out != nil {
		return out
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.ordered == nil {
		out := make([]T, 0, len(x.byID))
		for _, v := range x.byID {
			out = append(out, v)
		}
		sort.Slice(out, func(i, j int) bool { return x.created(out[i]).Before(x.created(out[j])) })
		x.ordered = out[:len(out):len(out)] // an append by a caller copies
	}
	return x.ordered
}

// names reserves sandbox and container names: kubelet expects a second
// create under one name to fail. Its lock is a leaf.
type names struct {
	mu    sync.Mutex
	taken map[string]string // name → ID
}

// reserve takes name for id, or says which object has it.
func (n *names) reserve(name, id string) (takenBy string, ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if other, taken := n.taken[name]; taken {
		return other, false
	}
	if n.taken == nil {
		n.taken = map[string]string{}
	}
	n.taken[name] = id
	return "", true
}

func (n *names) release(name string) {
	n.mu.Lock()
	delete(n.taken, name)
	n.mu.Unlock()
}
