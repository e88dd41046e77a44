package sandbox

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// Concurrent writes all commit, in fewer transactions than writes, and a
// write that fails fails alone.
func TestGroupCommit(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "g.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	bucket := []byte("b")
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket(bucket); return err })
	g := &groupCommit{db: db}
	var txMu sync.Mutex
	txs := map[int]bool{}
	const writers, each = 16, 50
	refused := errors.New("refused")
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				key := fmt.Sprintf("%d-%d", w, i)
				err := g.update(func(tx *bolt.Tx) error {
					txMu.Lock()
					txs[tx.ID()] = true
					txMu.Unlock()
					if i == 7 {
						return refused
					}
					return tx.Bucket(bucket).Put([]byte(key), []byte("v"))
				})
				if (i == 7) != errors.Is(err, refused) {
					errs <- fmt.Errorf("write %s: %v", key, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	db.View(func(tx *bolt.Tx) error {
		if n := tx.Bucket(bucket).Stats().KeyN; n != writers*(each-1) {
			t.Errorf("%d keys committed, want %d", n, writers*(each-1))
		}
		return nil
	})
	t.Logf("%d transactions for %d writes", len(txs), writers*each)
}
