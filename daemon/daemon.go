// Package daemon assembles wasmcri from its parts (metadata database,
// image service, wasm runtime, sandbox manager, CRI server) for a
// configuration, and runs it on its socket.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served on debug.pprof_address only
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/config"
	"github.com/wasmcri/wasmcri/cri"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/sandbox"
	"github.com/wasmcri/wasmcri/wasm"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
)

// Daemon is a wired wasmcri, listening once Start returns.
type Daemon struct {
	cfg *config.Config
	log *slog.Logger
	// db holds image metadata, written durably. stateDB holds sandboxes and
	// containers; see openStateDB.
	db        *bolt.DB
	stateDB   *bolt.DB
	stopSync  chan struct{}
	synced    sync.WaitGroup
	runtime   *wasm.Runtime
	Images    *image.Service
	Sandboxes *sandbox.Manager
	grpc      *grpc.Server
	streams   *cri.StreamServer
	listener  net.Listener
	pprof     net.Listener
	// admin serves `wasmcri image import` on adminListener.
	admin         *http.Server
	adminListener net.Listener
	served        chan error
}

// Start opens the state under cfg.Root and cfg.State and serves CRI on
// cfg.GRPC.Address.
func Start(cfg *config.Config, version string, log *slog.Logger) (_ *Daemon, err error) {
	d := &Daemon{cfg: cfg, log: log, served: make(chan error, 1), stopSync: make(chan struct{})}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	// The root holds images, module code and every container's files; the
	// state dir the sockets: neither is for other local users to list or
	// write, whatever mode an earlier version or an operator left.
	for _, dir := range []string{cfg.Root, cfg.State} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("restrict %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(cfg.GRPC.Address), 0o711); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(cfg.GRPC.Address), err)
	}
	dbPath := filepath.Join(cfg.Root, "meta.db")
	if d.db, err = bolt.Open(dbPath, 0o600, &bolt.Options{Timeout: 2 * time.Second}); err != nil {
		return nil, fmt.Errorf("open metadata database %s (is another wasmcri running on this root?): %w", dbPath, err)
	}
	if d.stateDB, err = openStateDB(filepath.Join(cfg.Root, "state.db"), log); err != nil {
		return nil, err
	}
	d.synced.Add(1)
	go d.syncState()
	if d.runtime, err = wasm.NewRuntime(filepath.Join(cfg.Root, "modules"), wasm.Options{
		MaxWasmStack:       cfg.Runtime.MaxWasmStack,
		DefaultMemoryLimit: cfg.Runtime.DefaultMemoryLimit,
		MaxModuleSize:      cfg.Image.MaxModuleSize,
		CompileTimeout:     cfg.Runtime.CompileTimeout.Duration,
		CompileMemoryLimit: cfg.Runtime.CompileMemoryLimit,
		Logger:             log,
	}); err != nil {
		return nil, err
	}
	d.Images, err = image.NewService(d.db, filepath.Join(cfg.Root, "content"), image.Options{
		Registry:           image.RegistryOptions{PlainHTTP: cfg.Registry.PlainHTTP, ConfigPath: cfg.Registry.ConfigPath, DockerConfig: cfg.Registry.DockerConfig},
		MaxLayerSize:       cfg.Image.MaxLayerSize,
		MaxModuleSize:      cfg.Image.MaxModuleSize,
		MaxUnpackedSize:    cfg.Image.MaxUnpackedSize,
		MaxUnpackedEntries: cfg.Image.MaxUnpackedEntries,
		PullTimeout:        cfg.Image.PullTimeout.Duration,
		Validate:           d.runtime.Validate,
		Compile:            d.compileAtPull,
		Deleted:            d.forgetCompiled,
		Logger:             log,
	})
	if err != nil {
		return nil, err
	}
	d.collectCompiled(context.Background())
	d.Sandboxes, err = sandbox.NewManager(d.stateDB, d.Images, d.runtime, sandbox.Options{
		RootDir: cfg.Root, RootsDir: filepath.Join(cfg.State, "containers"), Handlers: cfg.Runtime.Handlers, Logger: log,
		WritableLayerSize: cfg.Runtime.WritableLayerSize, WritableLayerInodes: cfg.Runtime.WritableLayerInodes,
		// Namespaces and the built-in network's leases live in the state
		// directory: both end with the machine, and go together.
		Network: &sandbox.NetworkOptions{
			PluginDirs: cfg.Network.CNIBinDirs, ConfDir: cfg.Network.CNIConfDir, NetNSDir: filepath.Join(cfg.State, "netns"),
			DefaultBridge: cfg.Network.DefaultBridge, DefaultSubnet: cfg.Network.DefaultSubnet, IPAMDir: filepath.Join(cfg.State, "cni"),
			PoolSize: cfg.Network.PoolSize,
		},
	})
	if err != nil {
		return nil, err
	}
	// The loaded containers hold the unpacked files their roots show; what
	// nothing holds any more goes.
	if n, err := d.Images.CollectFilesystems(context.Background()); err != nil {
		log.Warn("unpacked images not collected", "error", err)
	} else if n > 0 {
		log.Info("collected unpacked files of removed images", "trees", n)
	}
	d.streams, err = cri.NewStreamServer(net.JoinHostPort(cfg.Stream.Address, cfg.Stream.Port), cfg.Stream.IdleTimeout.Duration, d.Sandboxes)
	if err != nil {
		return nil, err
	}
	go func() {
		if err := d.streams.Serve(); err != nil {
			log.Error("stream server stopped", "error", err)
		}
	}()
	server := cri.NewServer(d.Sandboxes, d.Images, d.streams, cri.Info{Version: version, Handlers: cfg.Runtime.Handlers, Config: cfg, CgroupDriver: cfg.Runtime.CgroupDriver}, log)
	d.grpc = server.NewGRPCServer(cfg.GRPC.MaxRecvMessageSize, cfg.GRPC.MaxSendMessageSize)
	if d.listener, err = listenUnix(cfg.GRPC.Address, 0o660); err != nil {
		return nil, err
	}
	go func() { d.served <- d.grpc.Serve(d.listener) }()
	if err := d.serveAdmin(cfg.AdminSocket()); err != nil {
		return nil, err
	}
	if cfg.Debug.PprofAddress != "" {
		// A unix socket as closed as the CRI socket: pprof shows memory and
		// arguments of every pod, and a TCP port is open to every local
		// user.
		if d.pprof, err = listenUnix(cfg.Debug.PprofAddress, 0o600); err != nil {
			return nil, fmt.Errorf("debug.pprof_address: %w", err)
		}
		go http.Serve(d.pprof, http.DefaultServeMux) // net/http/pprof's handlers
		log.Info("pprof serving", "socket", cfg.Debug.PprofAddress)
	}
	log.Info("wasmcri serving", "version", version, "socket", cfg.GRPC.Address, "root", cfg.Root, "state", cfg.State, "handlers", cfg.Runtime.Handlers, "stream_server", d.streams.Addr())
	return d, nil
}

// Done delivers the error that ended serving, if serving ends on its own.
func (d *Daemon) Done() <-chan error { return d.served }

// Stop finishes calls in flight (for at most grace), stops every running
// instance and closes the database and socket.
func (d *Daemon) Stop(grace time.Duration) {
	done := make(chan struct{})
	go func() { d.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		d.grpc.Stop()
	}
	d.close()
}

func (d *Daemon) close() {
	if d.admin != nil {
		d.admin.Close()
		os.Remove(d.cfg.AdminSocket())
	}
	if d.pprof != nil {
		d.pprof.Close()
		os.Remove(d.cfg.Debug.PprofAddress)
	}
	if d.streams != nil {
		d.streams.Close()
	}
	if d.Sandboxes != nil {
		d.Sandboxes.Shutdown()
	}
	if d.runtime != nil {
		d.runtime.Close()
	}
	close(d.stopSync)
	d.synced.Wait()
	if d.stateDB != nil {
		d.stateDB.Sync()
		d.stateDB.Close()
	}
	if d.db != nil {
		d.db.Close()
	}
	if d.listener != nil {
		os.Remove(d.cfg.GRPC.Address)
	}
}

// listenUnix listens on path with the socket's final mode from the start,
// replacing a stale socket but never one a live daemon still answers on.
// The socket is bound in a private directory beside path, given its mode
// there and renamed into place, so no one can connect while it has the
// mode the umask gave it.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if _, err := os.Stat(path); err == nil {
		if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
			conn.Close()
			return nil, fmt.Errorf("socket %s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	private, err := os.MkdirTemp(filepath.Dir(path), ".listen-")
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The socket file moves: closing must not try to unlink the old name.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}

// stateSyncInterval is how often sandbox and container state is flushed
// to disk.
const stateSyncInterval = 2 * time.Second

// openStateDB opens the database of sandboxes and containers without an
// fsync per commit. Every pod start writes it three times, and fsyncs cost
// more than everything else a start does (see docs/performance.md). What
// a commit writes is in the page cache at once, so a crash or restart of
// the daemon loses nothing; only a crash of the machine can, and then every
// instance has died too and kubelet recreates its pods. The database is
// flushed every stateSyncInterval and at shutdown; one left unreadable by a
// machine crash is set aside and started afresh, never blocking the
// daemon.
func openStateDB(path string, log *slog.Logger) (*bolt.DB, error) {
	opts := &bolt.Options{Timeout: 2 * time.Second, NoSync: true, NoFreelistSync: true}
	db, err := bolt.Open(path, 0o600, opts)
	if err == nil {
		if err = db.View(func(tx *bolt.Tx) error {
			for cerr := range tx.Check() {
				return cerr
			}
			return nil
		}); err == nil {
			return db, nil
		}
		db.Close()
	}
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open state database %s (is another wasmcri running on this root?): %w", path, err)
	}
	aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
	log.Error("state database unreadable: setting it aside and starting with no sandboxes", "path", path, "moved_to", aside, "error", err)
	if rerr := os.Rename(path, aside); rerr != nil {
		return nil, fmt.Errorf("state database %s is unreadable (%v) and cannot be moved aside: %w", path, err, rerr)
	}
	return bolt.Open(path, 0o600, opts)
}

// syncState flushes the state database periodically.
func (d *Daemon) syncState() {
	defer d.synced.Done()
	t := time.NewTicker(stateSyncInterval)
	defer t.Stop()
	for {
		select {
		case <-d.stopSync:
			return
		case <-t.C:
			if err := d.stateDB.Sync(); err != nil {
				d.log.Warn("flush state database", "error", err)
			}
		}
	}
}

// compileAtPull compiles a pulled module into the runtime's cache, so
// that CreateContainer never compiles an image pulled or imported here. A
// module wasmtime cannot compile is the image's fault.
func (d *Daemon) compileAtPull(ctx context.Context, module digest.Digest, load func() ([]byte, error)) error {
	_, err := d.runtime.Prepare(ctx, module, load)
	switch {
	case errors.Is(err, wasm.ErrInvalidModule):
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	case errors.Is(err, wasm.ErrCompileLimit):
		return fmt.Errorf("%w: %w", err, errdefs.ErrResourceExhausted)
	}
	return err
}

// forgetCompiled drops what was compiled from a module when the store
// deletes its blob: the compiled module goes with the last image holding it.
func (d *Daemon) forgetCompiled(blob digest.Digest) {
	if err := d.runtime.Forget(blob); err != nil {
		d.log.Warn("compiled module not removed", "module", blob, "error", err)
	}
}

// collectCompiled removes, at start-up, compiled modules whose module no
// image holds: images removed by a wasmcri that kept them, or a crash
// between a blob's deletion and its compiled module's.
func (d *Daemon) collectCompiled(ctx context.Context) {
	mods, err := d.runtime.CompiledModules()
	if err != nil {
		d.log.Warn("compiled modules not listed", "error", err)
		return
	}
	for _, m := range mods {
		if !d.Images.HasBlob(ctx, m) {
			d.forgetCompiled(m)
			d.log.Info("removed a compiled module no image holds", "module", m)
		}
	}
}
