package sandbox

import (
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// addUsage fills in disk usage, from the cache when it has it.
func (m *Manager) addUsage(c *Container, st *Stats) {
	u := m.usage.get(c.ID, m.writableDir(c), c.LogPath)
	u.fill(st)
}

// diskUses is addUsage's figures for each of all, the cache locked once.
func (m *Manager) diskUses(all []*containerEntry) []diskUse {
	out := make([]diskUse, len(all))
	var missing []int
	m.usage.mu.Lock()
	for i, c := range all {
		u, ok := m.usage.uses[c.ID]
		if !ok {
			missing = append(missing, i)
		}
		out[i] = u
	}
	m.usage.mu.Unlock()
	for _, i := range missing {
		c := all[i]
		out[i] = m.usage.get(c.ID, m.writableDir(&c.Container), c.LogPath)
	}
	return out
}

func (u *diskUse) fill(st *Stats) {
	st.WritableBytes, st.WritableInodes, st.LogBytes, st.RootDir = u.bytes, u.inodes, u.logBytes, u.root
}

// usageRefresh is how old disk usage figures may get. Walking every
// container's root on each stats call would cost kubelet's every-second
// polls milliseconds per hundred containers; kubelet's own filesystem
// stats are refreshed on a similar period.
const usageRefresh = 10 * time.Second

// diskUse is a container's disk usage at one time.
type diskUse struct {
	bytes, inodes, logBytes uint64
	root, logPath           string
}

// usageCache keeps each container's disk usage, measured when first asked
// for and then refreshed in the background.
type usageCache struct {
	mu   sync.Mutex
	uses map[string]diskUse
	stop chan struct{}
}

func newUsageCache() *usageCache {
	c := &usageCache{uses: map[string]diskUse{}, stop: make(chan struct{})}
	go c.refreshEvery(usageRefresh)
	return c
}

func (c *usageCache) get(id, root, logPath string) diskUse {
	c.mu.Lock()
	u, ok := c.uses[id]
	c.mu.Unlock()
	if ok {
		return u
	}
	u = measure(root, logPath)
	c.mu.Lock()
	c.uses[id] = u
	c.mu.Unlock()
	return u
}

func (c *usageCache) forget(id string) {
	c.mu.Lock()
	delete(c.uses, id)
	c.mu.Unlock()
}

func (c *usageCache) close() { close(c.stop) }

func (c *usageCache) refreshEvery(period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.mu.Lock()
		todo := make(map[string]diskUse, len(c.uses))
		for id, u := range c.uses {
			todo[id] = u
		}
		c.mu.Unlock()
		for id, u := range todo {
			fresh := measure(u.root, u.logPath)
			c.mu.Lock()
			if _, still := c.uses[id]; still {
				c.uses[id] = fresh
				// No root at all (not even itself counted): the container
				// went, and a listing racing its removal measured it back.
				if fresh.inodes == 0 {
					delete(c.uses, id)
				}
			}
			c.mu.Unlock()
		}
	}
}

func measure(root, logPath string) diskUse {
	u := diskUse{root: root, logPath: logPath}
	u.bytes, u.inodes = diskUsage(root)
	if logPath != "" {
		if fi, err := os.Stat(logPath); err == nil {
			u.logBytes = uint64(fi.Size())
		}
	}
	return u
}

// diskUsage counts the bytes and inodes under dir; hard-linked file mounts
// count too, as they sit in the container's root.
func diskUsage(dir string) (bytes, inodes uint64) {
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		inodes++
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				bytes += uint64(fi.Size())
			}
		}
		return nil
	})
	return bytes, inodes
}
