package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/distribution/reference"
	"github.com/urfave/cli/v2"
	"github.com/wasmcri/wasmcri/daemon"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
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
		}, {
			Name:      "import",
			Usage:     "load an image into the node's store without a registry: a .wasm file, an OCI layout directory, or an OCI layout tarball",
			ArgsUsage: "FILE REF",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "format", Value: "oci", Usage: "for a .wasm file: oci or compat"},
				&cli.StringFlag{Name: "config", Value: defaultConfigPath, Usage: "the daemon's configuration, to find its admin socket"},
				&cli.StringFlag{Name: "address", Usage: "the daemon's admin socket (default: beside its CRI socket)"},
			},
			Action: importImage,
		}},
	}
}

// buildFromWasm makes an image of a .wasm file in the chosen format.
func buildFromWasm(file, format string) (*imagebuild.Built, error) {
	module, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	switch format {
	case "oci":
		return imagebuild.BuildArtifact(module, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer), nil
	case "compat":
		return imagebuild.BuildCompat(module, imagebuild.CompatOptions{ModulePath: "/" + path.Base(file)})
	}
	return nil, fmt.Errorf("--format %q: want oci or compat", format)
}

func importImage(c *cli.Context) error {
	if c.NArg() != 2 {
		return fmt.Errorf("usage: wasmcri image import FILE REF")
	}
	file, ref := c.Args().Get(0), c.Args().Get(1)
	socket := c.String("address")
	if socket == "" {
		cfg, err := loadConfig(c)
		if err != nil {
			return err
		}
		socket = cfg.AdminSocket()
	}
	body, err := layoutTar(file, ref, c.String("format"))
	if err != nil {
		return err
	}
	defer body.Close()
	resp, err := daemon.ImportImage(c.Context, socket, ref, body)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "imported %s as %s\n", ref, resp.ID)
	return nil
}

// layoutTar streams FILE as an OCI layout tarball: a .wasm file becomes a
// one-image layout, a directory is tarred, a tarball (gzip or not) is sent.
func layoutTar(file, ref, format string) (io.ReadCloser, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	switch {
	case fi.IsDir():
		go func() { pw.CloseWithError(tarDir(pw, file)) }()
		return pr, nil
	case isWasmFile(file):
		built, err := buildFromWasm(file, format)
		if err != nil {
			return nil, err
		}
		go func() { pw.CloseWithError(imagebuild.LayoutOf(built, ref).WriteTar(pw)) }()
		return pr, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(f)
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, err
		}
		return struct {
			io.Reader
			io.Closer
		}{gz, f}, nil
	}
	return struct {
		io.Reader
		io.Closer
	}{br, f}, nil
}

func isWasmFile(file string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, 4)
	n, _ := io.ReadFull(f, magic)
	return n == 4 && string(magic) == "\x00asm"
}

// tarDir writes the regular files and directories under dir as a tar.
func tarDir(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		if !d.Type().IsRegular() && !d.IsDir() {
			return fmt.Errorf("%s is neither a file nor a directory", p)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

func pushImage(c *cli.Context) error {
	if c.NArg() != 2 {
		return fmt.Errorf("usage: wasmcri image push FILE.wasm REF")
	}
	file, ref := c.Args().Get(0), c.Args().Get(1)
	named, err := image.ParseReference(ref)
	if err != nil {
		return err
	}
	built, err := buildFromWasm(file, c.String("format"))
	if err != nil {
		return err
	}
	reg := image.RegistryOptions{}
	if c.Bool("insecure") {
		reg.PlainHTTP = []string{reference.Domain(named)}
	}
	var auth *image.Auth
	if c.String("username") != "" {
		auth = &image.Auth{Username: c.String("username"), Password: c.String("password")}
	}
	if err := imagebuild.Push(c.Context, named.String(), built, reg, auth); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "pushed %s@%s\n", named.String(), built.Root.Digest)
	return nil
}
