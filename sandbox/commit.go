package sandbox

import (
	"sync"

	bolt "go.etcd.io/bbolt"
)

// groupCommit puts writes that arrive together into one bbolt
// transaction. bbolt lets one writer in at a time, and every commit costs
// the same whatever it holds (page writes, the meta page), so under
// concurrent calls each write waiting its turn for a commit of its own
// would make the database the bottleneck. The first writer commits at once
// (no timer, unlike bolt.DB.Batch, so a lone call waits for nothing);
// writes that arrive meanwhile queue, and the next of them commits them
// all when the commit under way ends.
type groupCommit struct {
	db    *bolt.DB
	mu    sync.Mutex
	queue []*write
	busy  bool
}

// write is one queued write: fn, then its outcome.
type write struct {
	fn  func(*bolt.Tx) error
	err error
	// done says the write is committed (false) or that its writer now
	// commits the queue, its own write first (true).
	done chan bool
}

// update runs fn in a read-write transaction, perhaps with other writes,
// and returns fn's outcome once it is committed.
func (g *groupCommit) update(fn func(*bolt.Tx) error) error {
	w := &write{fn: fn, done: make(chan bool, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, w)
	if g.busy {
		g.mu.Unlock()
		if lead := <-w.done; !lead {
			return w.err
		}
		g.mu.Lock()
	}
	g.busy = true
	batch := g.queue
	g.queue = nil
	g.mu.Unlock()

	g.commit(batch)

	g.mu.Lock()
	if len(g.queue) > 0 {
		g.queue[0].done <- true
	} else {
		g.busy = false
	}
	g.mu.Unlock()
	for _, o := range batch {
		if o != w {
			o.done <- false
		}
	}
	return w.err
}

// commit runs batch in one transaction. If it fails, each write runs
// again in a transaction of its own, so a write that cannot be made fails
// alone and the others still commit.
func (g *groupCommit) commit(batch []*write) {
	if len(batch) > 1 {
		err := g.db.Update(func(tx *bolt.Tx) error {
			for _, w := range batch {
				if err := w.fn(tx); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			return
		}
	}
	for _, w := range batch {
		w.err = g.db.Update(w.fn)
	}
}
