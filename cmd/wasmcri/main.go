// Command wasmcri is a CRI runtime that runs WebAssembly pods on wasmtime.
package main

import (
	"fmt"
	"os"

	clog "github.com/containerd/log"
	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	app := newApp()
	if err := app.Run(flagsFirst(app, os.Args)); err != nil {
		fmt.Fprintln(os.Stderr, "wasmcri:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "wasmcri",
		Usage: "a Kubernetes CRI runtime for WebAssembly workloads on wasmtime",
		Before: func(*cli.Context) error {
			// containerd's registry client logs through logrus at info
			// level about routine things; keep its warnings only.
			return clog.SetLevel("warn")
		},
		Commands: []*cli.Command{
			serveCommand(),
			versionCommand(),
			configCommand(),
			imageCommand(),
		},
	}
}
