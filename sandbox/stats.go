package sandbox

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/wasm"
)

// Stats are a container's resource figures at one moment.
type Stats struct {
	Timestamp time.Time
	// CPU is cumulative CPU time; NanoCores the rate since the previous
	// Stats call on this container (0 on the first).
	CPU       time.Duration
	NanoCores uint64
	// MemoryBytes is the linear memory of the running instance.
	MemoryBytes int64
	// Instance has the instance's finer figures (user/system CPU, peak
	// memory, CPU cap accounting).
	Instance wasm.Stats
	// WritableBytes and WritableInodes measure the container's writable
	// root; LogBytes its log file.
	WritableBytes, WritableInodes uint64
	LogBytes                      uint64
	// RootDir is the writable root, the filesystem the usage is of.
	RootDir string
}

// ContainerStats measures one container.
func (m *Manager) ContainerStats(id string) (Stats, error) {
	m.mu.Lock()
	c, err := m.containerLocked(id)
	if err != nil {
		m.mu.Unlock()
		return Stats{}, err
	}
	st := m.statsLocked(c, time.Now())
	m.mu.Unlock()
	m.addUsage(c.ID, c.LogPath, &st)
	return st, nil
}

// ContainerWithStats is a container and its figures.
type ContainerWithStats struct {
	Container
	Stats Stats
}

// AllContainerStats measures every container the filter keeps, in one
// pass: kubelet asks for all of them every few seconds.
func (m *Manager) AllContainerStats(keep func(*Container) bool) []ContainerWithStats {
	now := time.Now()
	m.mu.Lock()
	out := make([]ContainerWithStats, 0, len(m.containers))
	for _, c := range m.containers {
		if keep(c) {
			out = append(out, ContainerWithStats{Container: c.snapshot(), Stats: m.statsLocked(c, now)})
		}
	}
	m.mu.Unlock()
	for i := range out {
		m.addUsage(out[i].ID, out[i].LogPath, &out[i].Stats)
	}
	return out
}

func (m *Manager) statsLocked(c *Container, now time.Time) Stats {
	st := Stats{Timestamp: now, CPU: c.CPU, RootDir: m.rootfs(c.ID), Instance: wasm.Stats{CPU: c.CPU}}
	if r := c.run; r != nil && r.live != nil {
		is := r.live.instance.Stats()
		st.CPU, st.MemoryBytes, st.Instance = is.CPU, is.MemoryBytes, is
		if prev := r.lastSample; !prev.at.IsZero() && now.After(prev.at) && st.CPU >= prev.cpu {
			st.NanoCores = uint64(float64(st.CPU-prev.cpu) / now.Sub(prev.at).Seconds())
		}
		r.lastSample = cpuSample{at: now, cpu: st.CPU}
	}
	return st
}

// addUsage fills in disk usage, from the cache when it has it.
func (m *Manager) addUsage(id, logPath string, st *Stats) {
	u := m.usage.get(id, st.RootDir, logPath)
	st.WritableBytes, st.WritableInodes, st.LogBytes = u.bytes, u.inodes, u.logBytes
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

// ReopenLog makes a running container write its log to a new file at its
// log path, after kubelet has moved the old one away to rotate it.
func (m *Manager) ReopenLog(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.containerLocked(id)
	if err != nil {
		return err
	}
	if c.run == nil || c.run.live == nil {
		return fmt.Errorf("container %s is %s; only a running container's log can be reopened: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	if c.run.live.log == nil {
		return fmt.Errorf("container %s has no log path: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	return c.run.live.log.Reopen()
}

// cpuSample is a container's CPU time at one moment, for rates.
type cpuSample struct {
	at  time.Time
	cpu time.Duration
}
