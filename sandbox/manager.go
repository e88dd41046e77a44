package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/wasm"
	bolt "go.etcd.io/bbolt"
)

// Images is what the lifecycle needs of the image store.
type Images interface {
	Get(ref string) (*image.Image, error)
	ReadModule(ctx context.Context, img *image.Image) ([]byte, error)
	// Filesystem unpacks an image's files, for image volumes.
	Filesystem(ctx context.Context, img *image.Image) (string, error)
	// HoldFilesystem is Filesystem, keeping the files until
	// ReleaseFilesystem even if the image is removed: a container root
	// stacks its writable layer over them.
	HoldFilesystem(ctx context.Context, img *image.Image) (string, error)
	// Hold keeps an image's unpacked files, if any, the same way.
	Hold(ctx context.Context, id string) error
	ReleaseFilesystem(id string)
}

// Options configure a Manager.
type Options struct {
	// RootDir keeps default logs and the empty directory masked paths
	// show.
	RootDir string
	// RootsDir holds the containers' roots, each a tmpfs (roots.go);
	// default RootDir/roots. The daemon puts it in its state directory.
	RootsDir string
	// WritableLayerSize and WritableLayerInodes bound each container's
	// writable layer; defaults DefaultWritableLayerSize and
	// DefaultWritableLayerInodes.
	WritableLayerSize, WritableLayerInodes int64
	// Handlers are the runtime handler names accepted; the first is the
	// default for an empty runtime_handler.
	Handlers []string
	// Network attaches pods to a CNI network, each in a namespace of its
	// own (network.go); nil keeps every pod on the node's network.
	Network *NetworkOptions
	Logger  *slog.Logger
}

// Manager owns every sandbox and container. Each object has its own lock
// (see update.go for the lock order and the one path state changes take);
// nothing slow (compiling, making a root, waiting for an instance to end)
// happens while any lock is held.
type Manager struct {
	opts    Options
	images  Images
	runtime *wasm.Runtime
	records *records
	log     *slog.Logger

	sandboxes  *index[*sandboxEntry]
	containers *index[*containerEntry]
	names      names
	// shuttingDown makes instances ended by Shutdown say so.
	shuttingDown atomic.Bool

	events events
	usage  *usageCache
	// network is nil when pods use the node's network; netPool, when not
	// nil, holds namespaces attached ahead of need.
	network *podNetwork
	netPool *netPool
}

// NewManager loads persisted state. Containers that were running when the
// daemon last stopped are marked exited: their instances died with it.
func NewManager(db *bolt.DB, images Images, rt *wasm.Runtime, opts Options) (*Manager, error) {
	if len(opts.Handlers) == 0 {
		return nil, fmt.Errorf("no runtime handlers configured")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.RootsDir == "" {
		opts.RootsDir = filepath.Join(opts.RootDir, "roots")
	}
	if opts.WritableLayerSize <= 0 {
		opts.WritableLayerSize = DefaultWritableLayerSize
	}
	if opts.WritableLayerInodes <= 0 {
		opts.WritableLayerInodes = DefaultWritableLayerInodes
	}
	recs, err := newRecords(db)
	if err != nil {
		return nil, fmt.Errorf("init sandbox metadata: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(opts.RootDir, "empty"), 0o555); err != nil {
		return nil, err
	}
	m := &Manager{
		opts: opts, images: images, runtime: rt, records: recs, log: opts.Logger,
		sandboxes: newIndex("sandbox", sandboxCreated), containers: newIndex("container", containerCreated),
	}
	sandboxes, containers, err := recs.load()
	if err != nil {
		return nil, fmt.Errorf("load sandbox metadata: %w", err)
	}
	for _, sb := range sandboxes {
		m.sandboxes.add(sb.ID, &sandboxEntry{Sandbox: *sb})
		m.names.reserve(sb.Name(), sb.ID)
	}
	for _, c := range containers {
		if c.State == ContainerRunning {
			c.State = ContainerExited
			c.FinishedAt = time.Now()
			c.ExitCode = 255
			c.Reason = ReasonDaemonRestarted
			c.Message = "wasmcri died while the container was running; its instance ended with the daemon"
			if err := recs.putContainer(c); err != nil {
				return nil, err
			}
		}
		m.containers.add(c.ID, &containerEntry{Container: *c})
		m.names.reserve(c.Name(), c.ID)
	}
	if opts.Network != nil {
		if m.network, err = newPodNetwork(*opts.Network); err != nil {
			return nil, err
		}
	}
	m.reclaim()
	m.reclaimNetworks()
	if m.network != nil && opts.Network.PoolSize > 0 {
		m.netPool = newNetPool(m.network, opts.Network.PoolSize, m.log)
	}
	if err := m.mountRoots(); err != nil {
		return nil, err
	}
	m.remakeRoots(context.Background())
	m.usage = newUsageCache()
	m.log.Info("loaded state", "sandboxes", len(sandboxes), "containers", len(containers))
	return m, nil
}

// reclaim removes what a crash left without a record: the log
// directories of sandboxes whose creation never committed (or whose
// removal was cut short after the record went), and container roots an
// older wasmcri kept on disk. (Roots in memory are roots.go's.) It runs at
// start-up, before anything is served.
func (m *Manager) reclaim() {
	if legacy := filepath.Join(m.opts.RootDir, "containers"); legacy != m.opts.RootsDir {
		if err := os.RemoveAll(legacy); err != nil {
			m.log.Warn("container roots of an older wasmcri not removed", "path", legacy, "error", err)
		}
	}
	for dir, known := range map[string]func(string) bool{
		filepath.Join(m.opts.RootDir, "sandboxes"): m.sandboxes.has,
	} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if known(e.Name()) {
				continue
			}
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				m.log.Warn("leftover not reclaimed", "path", filepath.Join(dir, e.Name()), "error", err)
				continue
			}
			m.log.Info("reclaimed a leftover of an earlier run", "path", filepath.Join(dir, e.Name()))
		}
	}
}

// Shutdown stops every running instance, leaving the records in place:
// after a restart those containers show as exited.
func (m *Manager) Shutdown() {
	if m.shuttingDown.Swap(true) {
		return
	}
	m.usage.close()
	m.netPool.close()
	var running []*run
	for _, c := range m.containers.all() {
		c.mu.Lock()
		if c.run != nil {
			c.run.stop()
			running = append(running, c.run)
		}
		c.mu.Unlock()
	}
	for _, r := range running {
		select {
		case <-r.recorded:
		case <-time.After(5 * time.Second):
		}
	}
	m.unmountRoots()
}

func newID() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func sandboxCreated(sb *sandboxEntry) time.Time    { return sb.CreatedAt }
func containerCreated(c *containerEntry) time.Time { return c.CreatedAt }

// Sandbox returns a copy of the sandbox with id (or a unique prefix of it).
func (m *Manager) Sandbox(id string) (Sandbox, error) {
	sb, err := m.sandboxes.get(id)
	if err != nil {
		return Sandbox{}, err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.Sandbox, nil
}

// Sandboxes returns copies of every sandbox, oldest first.
func (m *Manager) Sandboxes() []Sandbox {
	all := m.sandboxes.all()
	out := make([]Sandbox, len(all))
	for i, sb := range all {
		sb.mu.Lock()
		out[i] = sb.Sandbox
		sb.mu.Unlock()
	}
	return out
}

// Container returns a copy of the container with id (or a unique prefix).
func (m *Manager) Container(id string) (Container, error) {
	c, err := m.containers.get(id)
	if err != nil {
		return Container{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Container, nil
}

// Containers returns copies of every container, oldest first.
func (m *Manager) Containers() []Container {
	all := m.containers.all()
	out := make([]Container, len(all))
	for i, c := range all {
		c.mu.Lock()
		out[i] = c.Container
		c.mu.Unlock()
	}
	return out
}

// containersOf lists the containers of a sandbox.
func (m *Manager) containersOf(sandboxID string) []*containerEntry {
	var out []*containerEntry
	for _, c := range m.containers.all() {
		if c.SandboxID == sandboxID {
			out = append(out, c)
		}
	}
	return out
}

// defaultLogDir is where a sandbox created without a log directory keeps
// its containers' logs.
func (m *Manager) defaultLogDir(id string) string {
	return filepath.Join(m.opts.RootDir, "sandboxes", id, "logs")
}

// emptyDir is the always-empty directory masked directories show.
func (m *Manager) emptyDir() string { return filepath.Join(m.opts.RootDir, "empty") }
