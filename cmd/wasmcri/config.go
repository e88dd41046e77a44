package main

import (
	"errors"
	"io/fs"

	"github.com/urfave/cli/v2"
	"github.com/wasmcri/wasmcri/config"
)

const defaultConfigPath = "/etc/wasmcri/config.toml"

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "configuration helpers",
		Subcommands: []*cli.Command{{
			Name:  "default",
			Usage: "print the full default configuration as TOML",
			Action: func(c *cli.Context) error {
				b, err := config.Default().Encode()
				if err != nil {
					return err
				}
				_, err = c.App.Writer.Write(b)
				return err
			},
		}},
	}
}

// loadConfig reads the --config file, or the defaults when the flag was
// left at its default path and no file is there.
func loadConfig(c *cli.Context) (*config.Config, error) {
	path := c.String("config")
	cfg, err := config.Load(path)
	if errors.Is(err, fs.ErrNotExist) && !c.IsSet("config") {
		return config.Default(), nil
	}
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// applyFlags lets command-line flags override the file, then revalidates.
func applyFlags(c *cli.Context, cfg *config.Config) error {
	if c.IsSet("root") {
		cfg.Root = c.String("root")
	}
	if c.IsSet("state") {
		cfg.State = c.String("state")
	}
	if c.IsSet("listen") {
		cfg.GRPC.Address = c.String("listen")
	}
	if c.IsSet("log-level") {
		cfg.Log.Level = c.String("log-level")
	}
	if c.IsSet("log-format") {
		cfg.Log.Format = c.String("log-format")
	}
	return cfg.Validate()
}
