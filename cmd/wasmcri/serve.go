package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	clog "github.com/containerd/log"
	"github.com/urfave/cli/v2"
	"github.com/wasmcri/wasmcri/config"
	"github.com/wasmcri/wasmcri/cri"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/sandbox"
	"github.com/wasmcri/wasmcri/wasm"
	bolt "go.etcd.io/bbolt"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "serve the CRI runtime and image services on a unix socket",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Value: defaultConfigPath, Usage: "TOML configuration file (see 'wasmcri config default')"},
			&cli.StringFlag{Name: "root", Usage: "directory for persistent data (default " + config.DefaultRoot + ")"},
			&cli.StringFlag{Name: "state", Usage: "directory for runtime state (default " + config.DefaultState + ")"},
			&cli.StringFlag{Name: "listen", Usage: "CRI socket, unix:///path (default unix://" + config.DefaultAddress + ")"},
			&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "log-format", Usage: "text or json"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			if err := applyFlags(c, cfg); err != nil {
				return err
			}
			return serve(cfg)
		},
	}
}

func newLogger(cfg config.LogConfig) *slog.Logger {
	level, _ := config.ParseLevel(cfg.Level) // validated already
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// serve runs the daemon until SIGINT or SIGTERM.
func serve(cfg *config.Config) error {
	log := newLogger(cfg.Log)
	slog.SetDefault(log)
	if cfg.Log.Level == "debug" {
		_ = clog.SetLevel("debug")
	}

	for _, dir := range []string{cfg.Root, cfg.State, filepath.Dir(cfg.GRPC.Address)} {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	db, err := bolt.Open(filepath.Join(cfg.Root, "meta.db"), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return fmt.Errorf("open metadata database %s (is another wasmcri running on this root?): %w", filepath.Join(cfg.Root, "meta.db"), err)
	}
	defer db.Close()

	rt, err := wasm.NewRuntime(filepath.Join(cfg.Root, "modules"), wasm.Options{MaxWasmStack: cfg.Runtime.MaxWasmStack, Logger: log})
	if err != nil {
		return err
	}
	defer rt.Close()
	images, err := image.NewService(db, filepath.Join(cfg.Root, "content"), image.Options{
		Registry:     image.RegistryOptions{PlainHTTP: cfg.Registry.PlainHTTP, ConfigPath: cfg.Registry.ConfigPath},
		MaxLayerSize: cfg.Image.MaxLayerSize,
		PullTimeout:  cfg.Image.PullTimeout.Duration,
		Validate:     rt.Validate,
		Logger:       log,
	})
	if err != nil {
		return err
	}
	sandboxes, err := sandbox.NewManager(db, images, rt, sandbox.Options{
		RootDir: cfg.Root, StateDir: cfg.State, Handlers: cfg.Runtime.Handlers, Logger: log,
	})
	if err != nil {
		return err
	}
	defer sandboxes.Shutdown()

	server := cri.NewServer(sandboxes, images, cri.Info{Version: version, Handlers: cfg.Runtime.Handlers, Config: cfg}, log)
	g := server.NewGRPCServer(cfg.GRPC.MaxRecvMessageSize, cfg.GRPC.MaxSendMessageSize)
	l, err := listenUnix(cfg.GRPC.Address)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.GRPC.Address)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- cri.Serve(g, l) }()
	log.Info("wasmcri serving", "version", version, "socket", cfg.GRPC.Address, "root", cfg.Root, "state", cfg.State, "handlers", cfg.Runtime.Handlers)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		g.Stop()
	}
	return nil
}

// listenUnix listens on path, replacing a stale socket but never one a
// live daemon still answers on.
func listenUnix(path string) (net.Listener, error) {
	if fileExists(path) {
		if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
			conn.Close()
			return nil, fmt.Errorf("socket %s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
