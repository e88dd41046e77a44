// Package syncbuf is a buffer one goroutine writes while another reads
// it: the output of an instance, a stream or a logger, as tests collect it.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer is a bytes.Buffer safe for concurrent use, which also notes
// whether it was closed (streams close their writers at their end).
type Buffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	closed bool
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Close marks the buffer closed; it still takes writes.
func (b *Buffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return nil
}

// Closed says whether Close was called.
func (b *Buffer) Closed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// String is what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
