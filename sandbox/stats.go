package sandbox

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
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
	st := Stats{Timestamp: time.Now(), CPU: c.CPU, RootDir: m.rootfs(c.ID)}
	if r := c.run; r != nil {
		is := r.instance.Stats()
		st.CPU, st.MemoryBytes = is.CPU, is.MemoryBytes
		if prev := r.lastSample; !prev.at.IsZero() && st.Timestamp.After(prev.at) && st.CPU >= prev.cpu {
			st.NanoCores = uint64(float64(st.CPU-prev.cpu) / st.Timestamp.Sub(prev.at).Seconds())
		}
		r.lastSample = cpuSample{at: st.Timestamp, cpu: st.CPU}
	}
	logPath := c.LogPath
	m.mu.Unlock()

	st.WritableBytes, st.WritableInodes = diskUsage(st.RootDir)
	if fi, err := os.Stat(logPath); err == nil && logPath != "" {
		st.LogBytes = uint64(fi.Size())
	}
	return st, nil
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
	if c.run == nil {
		return fmt.Errorf("container %s is %s; only a running container's log can be reopened: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	if c.run.log == nil {
		return fmt.Errorf("container %s has no log path: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	return c.run.log.Reopen()
}

// cpuSample is a container's CPU time at one moment, for rates.
type cpuSample struct {
	at  time.Time
	cpu time.Duration
}
