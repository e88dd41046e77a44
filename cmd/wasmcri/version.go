package main

import (
	"fmt"
	"runtime"

	"github.com/urfave/cli/v2"
	"github.com/wasmcri/wasmcri/cri"
	"github.com/wasmcri/wasmcri/wasm"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version of wasmcri, wasmtime and Go",
		Action: func(c *cli.Context) error {
			fmt.Fprintf(c.App.Writer, "%s %s\nwasmtime %s\n%s %s/%s\nCRI v1\n", cri.RuntimeName, version, wasm.WasmtimeVersion, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
