package main

import (
	"fmt"
	"os"
	"path"

	"github.com/distribution/reference"
	"github.com/urfave/cli/v2"
	"github.com/wasmcri/wasmcri/image"
)

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "make Wasm images without Docker",
		Subcommands: []*cli.Command{{
			Name:      "push",
			Usage:     "build an image from a .wasm file and push it to a registry",
			ArgsUsage: "FILE.wasm REF",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "format", Value: "oci", Usage: "oci (Wasm OCI artifact, layer application/wasm) or compat (wasip1/wasm image with a tar layer)"},
				&cli.BoolFlag{Name: "insecure", Usage: "speak plain HTTP to the registry"},
				&cli.StringFlag{Name: "username", EnvVars: []string{"WASMCRI_REGISTRY_USER"}},
				&cli.StringFlag{Name: "password", EnvVars: []string{"WASMCRI_REGISTRY_PASSWORD"}},
			},
			Action: pushImage,
		}},
	}
}

func pushImage(c *cli.Context) error {
	if c.NArg() != 2 {
		return fmt.Errorf("usage: wasmcri image push FILE.wasm REF")
	}
	file, ref := c.Args().Get(0), c.Args().Get(1)
	module, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	named, err := image.ParseReference(ref)
	if err != nil {
		return err
	}
	var built *image.Built
	switch c.String("format") {
	case "oci":
		built = image.BuildArtifact(module, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer)
	case "compat":
		built, err = image.BuildCompat(module, image.CompatOptions{ModulePath: "/" + path.Base(file)})
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("--format %q: want oci or compat", c.String("format"))
	}
	reg := image.RegistryOptions{}
	if c.Bool("insecure") {
		reg.PlainHTTP = []string{reference.Domain(named)}
	}
	var auth *image.Auth
	if c.String("username") != "" {
		auth = &image.Auth{Username: c.String("username"), Password: c.String("password")}
	}
	if err := image.Push(c.Context, named.String(), built, reg, auth); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "pushed %s@%s\n", named.String(), built.Root.Digest)
	return nil
}
