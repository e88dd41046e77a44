package cri

// blocks hands out a list call's values from arrays of them: at 1,000
// containers a call would otherwise make thousands of small objects, each
// work for the allocator and then for the garbage collector (which
// kubelet's every-second relists keep busy). The values are only ever
// used through their pointers, never copied.
type blocks[T any] struct {
	free []T
	size int
}

// maxBlock bounds a block; the first is small, for filtered listings.
const maxBlock = 256

func (b *blocks[T]) next() *T {
	if len(b.free) == 0 {
		b.size = min(max(2*b.size, 8), maxBlock)
		b.free = make([]T, b.size)
	}
	p := &b.free[0]
	b.free = b.free[1:]
	return p
}
