package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
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
}

// Options configure a Manager.
type Options struct {
	// RootDir keeps per-container writable directories and default logs;
	// StateDir keeps per-container pipes.
	RootDir, StateDir string
	// Handlers are the runtime handler names accepted; the first is the
	// default for an empty runtime_handler.
	Handlers []string
	Logger   *slog.Logger
}

// Manager owns every sandbox and container. One mutex guards the maps and
// the objects' fields; nothing slow (compiling, waiting for an instance to
// end) happens while it is held.
type Manager struct {
	opts    Options
	images  Images
	runtime *wasm.Runtime
	store   *store
	log     *slog.Logger

	mu         sync.Mutex
	sandboxes  map[string]*Sandbox
	containers map[string]*Container
	// names reserves sandbox and container names, as kubelet expects a
	// second create under one name to fail.
	names map[string]string
	// shuttingDown makes instances ended by Shutdown say so.
	shuttingDown bool

	events events
	usage  *usageCache
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
	st, err := newStore(db)
	if err != nil {
		return nil, fmt.Errorf("init sandbox metadata: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(opts.RootDir, "empty"), 0o555); err != nil {
		return nil, err
	}
	m := &Manager{
		opts: opts, images: images, runtime: rt, store: st, log: opts.Logger,
		sandboxes: map[string]*Sandbox{}, containers: map[string]*Container{}, names: map[string]string{},
	}
	sandboxes, containers, err := st.load()
	if err != nil {
		return nil, fmt.Errorf("load sandbox metadata: %w", err)
	}
	for _, sb := range sandboxes {
		m.sandboxes[sb.ID] = sb
		m.names[sb.Name()] = sb.ID
	}
	for _, c := range containers {
		if c.State == ContainerRunning {
			c.State = ContainerExited
			c.FinishedAt = time.Now()
			c.ExitCode = 255
			c.Reason = ReasonDaemonRestarted
			c.Message = "wasmcri died while the container was running; its instance ended with the daemon"
			if err := st.putContainer(c); err != nil {
				return nil, err
			}
		}
		m.containers[c.ID] = c
		m.names[c.Name()] = c.ID
	}
	m.reclaim()
	m.usage = newUsageCache()
	m.log.Info("loaded state", "sandboxes", len(sandboxes), "containers", len(containers))
	return m, nil
}

// reclaim removes what a crash left without a record: the roots of
// containers whose creation never committed (or whose removal was cut
// short after the record went), and the log directories of such
// sandboxes. It runs at start-up, before anything is served.
func (m *Manager) reclaim() {
	for dir, known := range map[string]func(string) bool{
		filepath.Join(m.opts.RootDir, "containers"): func(id string) bool { _, ok := m.containers[id]; return ok },
		filepath.Join(m.opts.RootDir, "sandboxes"):  func(id string) bool { _, ok := m.sandboxes[id]; return ok },
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
	m.mu.Lock()
	if m.shuttingDown {
		m.mu.Unlock()
		return
	}
	m.shuttingDown = true
	m.usage.close()
	var running []*run
	for _, c := range m.containers {
		if c.run != nil {
			c.run.stopLocked()
			running = append(running, c.run)
		}
	}
	m.mu.Unlock()
	for _, r := range running {
		select {
		case <-r.recorded:
		case <-time.After(5 * time.Second):
		}
	}
}

func newID() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// resolve finds an ID by exact match or unique prefix, as crictl users
// type truncated IDs.
func resolve[T any](objects map[string]T, kind, id string) (string, error) {
	if id == "" {
		return "", fmt.Errorf("%s ID is empty: %w", kind, errdefs.ErrInvalidArgument)
	}
	if _, ok := objects[id]; ok {
		return id, nil
	}
	var found string
	for full := range objects {
		if strings.HasPrefix(full, id) {
			if found != "" {
				return "", fmt.Errorf("%s ID prefix %q is ambiguous: %w", kind, id, errdefs.ErrInvalidArgument)
			}
			found = full
		}
	}
	if found == "" {
		return "", fmt.Errorf("%s %q: %w", kind, id, errdefs.ErrNotFound)
	}
	return found, nil
}

func (m *Manager) sandboxLocked(id string) (*Sandbox, error) {
	full, err := resolve(m.sandboxes, "sandbox", id)
	if err != nil {
		return nil, err
	}
	return m.sandboxes[full], nil
}

func (m *Manager) containerLocked(id string) (*Container, error) {
	full, err := resolve(m.containers, "container", id)
	if err != nil {
		return nil, err
	}
	return m.containers[full], nil
}

// Sandbox returns a copy of the sandbox with id (or a unique prefix of it).
func (m *Manager) Sandbox(id string) (Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb, err := m.sandboxLocked(id)
	if err != nil {
		return Sandbox{}, err
	}
	return *sb, nil
}

// Sandboxes returns copies of every sandbox, oldest first.
func (m *Manager) Sandboxes() []Sandbox {
	m.mu.Lock()
	all := make([]*Sandbox, 0, len(m.sandboxes))
	for _, sb := range m.sandboxes {
		all = append(all, sb)
	}
	// Sort the pointers, not the copies: kubelet lists every second.
	sort.Slice(all, func(i, j int) bool { return all[i].CreatedAt.Before(all[j].CreatedAt) })
	out := make([]Sandbox, len(all))
	for i, sb := range all {
		out[i] = *sb
	}
	m.mu.Unlock()
	return out
}

// Container returns a copy of the container with id (or a unique prefix).
func (m *Manager) Container(id string) (Container, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.containerLocked(id)
	if err != nil {
		return Container{}, err
	}
	return c.snapshot(), nil
}

// Containers returns copies of every container, oldest first.
func (m *Manager) Containers() []Container {
	m.mu.Lock()
	all := make([]*Container, 0, len(m.containers))
	for _, c := range m.containers {
		all = append(all, c)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].CreatedAt.Before(all[j].CreatedAt) })
	out := make([]Container, len(all))
	for i, c := range all {
		out[i] = c.snapshot()
	}
	m.mu.Unlock()
	return out
}

// defaultLogDir is where a sandbox created without a log directory keeps
// its containers' logs.
func (m *Manager) defaultLogDir(id string) string {
	return filepath.Join(m.opts.RootDir, "sandboxes", id, "logs")
}

// emptyDir is the always-empty directory masked directories show.
func (m *Manager) emptyDir() string { return filepath.Join(m.opts.RootDir, "empty") }

// rootfs is the container's writable root: what the module sees at "/".
// Its path and parents are the daemon's own, so plain os calls on the
// root itself (make, remove) are safe; os.RemoveAll never follows a
// symlink below it. Anything inside goes through inroot.
func (m *Manager) rootfs(id string) string { return filepath.Join(m.opts.RootDir, "containers", id) }
