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
	m.addUsage(&c.Container, &st)
	return st, nil
}

// ContainerWithStats is a container and its figures.
type ContainerWithStats struct {
	Container
	Stats Stats
}

// AllContainerDetails measures every container the filter keeps, in one
// pass, into copies, with each instance's finer figures: for the metrics
// endpoint.
func (m *Manager) AllContainerDetails(keep func(*Container) bool) []ContainerWithStats {
	var out []ContainerWithStats
	m.eachStats(keep, true, func(c *Container, st *Stats) {
		out = append(out, ContainerWithStats{Container: *c, Stats: *st})
	})
	return out
}

// EachContainerStats measures every container keep accepts, in one
// pass, and calls fn with it and its figures, oldest first, as
// EachContainer does. keep runs under the container's lock too.
func (m *Manager) EachContainerStats(keep func(*Container) bool, fn func(*Container, *Stats)) {
	m.eachStats(keep, false, fn)
}

func (m *Manager) eachStats(keep func(*Container) bool, detailed bool, fn func(*Container, *Stats)) {
	all := m.containers.all()
	// Disk usage first, with no container locked: one not measured yet is
	// measured now.
	uses := m.diskUses(all)
	now := time.Now()
	// One Stats for all: fn keeps no pointer, and one per container would
	// each go to the heap.
	var st Stats
	for i, c := range all {
		func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.removed || !keep(&c.Container) {
				return
			}
			st = m.statsLocked(c, now, detailed)
			uses[i].fill(&st)
			fn(&c.Container, &st)
		}()
	}
}

// statsLocked reads the figures of c's instance, the finer ones only when
// detailed; c.mu is held.
func (m *Manager) statsLocked(c *containerEntry, now time.Time, detailed bool) Stats {
	st := Stats{Timestamp: now, CPU: c.CPU, Instance: wasm.Stats{CPU: c.CPU}}
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
