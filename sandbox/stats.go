package sandbox

import (
	"time"

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
	// memory, CPU cap accounting), filled in only by AllContainerDetails:
	// they cost a read of /proc and of cgroupfs per container.
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
	c, err := m.containers.get(id)
	if err != nil {
		return Stats{}, err
	}
	c.mu.Lock()
	st := m.statsLocked(c, time.Now(), false)
	c.mu.Unlock()
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
	return m.allStats(keep, false)
}

// AllContainerDetails is AllContainerStats with each instance's finer
// figures, for the metrics endpoint.
func (m *Manager) AllContainerDetails(keep func(*Container) bool) []ContainerWithStats {
	return m.allStats(keep, true)
}

func (m *Manager) allStats(keep func(*Container) bool, detailed bool) []ContainerWithStats {
	now := time.Now()
	all := m.containers.all()
	out := make([]ContainerWithStats, 0, len(all))
	for _, c := range all {
		c.mu.Lock()
		if keep(&c.Container) {
			out = append(out, ContainerWithStats{Container: c.Container, Stats: m.statsLocked(c, now, detailed)})
		}
		c.mu.Unlock()
	}
	for i := range out {
		m.addUsage(out[i].ID, out[i].LogPath, &out[i].Stats)
	}
	return out
}

// statsLocked reads the figures of c's instance, the finer ones only when
// detailed; c.mu is held.
func (m *Manager) statsLocked(c *containerEntry, now time.Time, detailed bool) Stats {
	st := Stats{Timestamp: now, CPU: c.CPU, RootDir: m.rootfs(c.ID), Instance: wasm.Stats{CPU: c.CPU}}
	if l := c.run.running(); l != nil {
		r := c.run
		if detailed {
			is := l.instance.Stats()
			st.CPU, st.MemoryBytes, st.Instance = is.CPU, is.MemoryBytes, is
		} else {
			u := l.instance.Usage()
			st.CPU, st.MemoryBytes = u.CPU, u.MemoryBytes
			st.Instance.CPU, st.Instance.MemoryBytes = u.CPU, u.MemoryBytes
		}
		if prev := r.lastSample; !prev.at.IsZero() && now.After(prev.at) && st.CPU >= prev.cpu {
			st.NanoCores = uint64(float64(st.CPU-prev.cpu) / now.Sub(prev.at).Seconds())
		}
		r.lastSample = cpuSample{at: now, cpu: st.CPU}
	}
	return st
}

// cpuSample is a container's CPU time at one moment, for rates.
type cpuSample struct {
	at  time.Time
	cpu time.Duration
}
