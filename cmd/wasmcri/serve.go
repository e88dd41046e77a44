package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	clog "github.com/containerd/log"
	"github.com/urfave/cli/v2"
	"github.com/wasmcri/wasmcri/config"
	"github.com/wasmcri/wasmcri/daemon"
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
	// containerd's registry and content libraries log through logrus:
	// same format as ours, and their chatter only when debugging.
	if cfg.Log.Level == "debug" {
		_ = clog.SetLevel("debug")
	}
	if cfg.Log.Format == "json" {
		_ = clog.SetFormat(clog.JSONFormat)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d, err := daemon.Start(cfg, version, log)
	if err != nil {
		return err
	}
	select {
	case err := <-d.Done():
		d.Stop(0)
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	d.Stop(5 * time.Second)
	return nil
}
