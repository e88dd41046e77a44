package image

import (
	"bytes"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/internal/inroot"
)

var wasmMagic = []byte("\x00asm")

// checkModuleHeader refuses what is not a core WebAssembly module, telling
// a component apart so the user knows what to change.
func checkModuleHeader(ref string, b []byte) error {
	if len(b) < 8 || !bytes.Equal(b[:4], wasmMagic) {
		return fmt.Errorf("%s: the module is not WebAssembly (no \\0asm header): %w", ref, errdefs.ErrInvalidArgument)
	}
	switch {
	case bytes.Equal(b[4:8], []byte{1, 0, 0, 0}):
		return nil
	case b[6] == 1 && b[7] == 0: // layer 1: the component model
		return fmt.Errorf("%s holds a WebAssembly component; components are not yet supported, only core modules (wasip1): %w", ref, errdefs.ErrInvalidArgument)
	default:
		return fmt.Errorf("%s: unknown WebAssembly binary version % x: %w", ref, b[4:8], errdefs.ErrInvalidArgument)
	}
}

// findModule finds the module of a compat image in its unpacked tree: the
// file the entrypoint names (the image's symlinks followed, inside the
// tree only), else the only .wasm file of the tree. It returns the
// module's path in the image and its bytes, at most maxSize of them.
func findModule(tree *inroot.Root, cfg *ocispec.Image, st treeStats, maxSize int64) (string, []byte, error) {
	target := ""
	if ep := cfg.Config.Entrypoint; len(ep) > 0 {
		target = ep[0]
	} else if cmd := cfg.Config.Cmd; len(cmd) > 0 && strings.HasSuffix(cmd[0], ".wasm") {
		target = cmd[0]
	}
	if target == "" {
		if st.nWasm != 1 {
			more := ""
			if st.nWasm > len(st.wasm) {
				more = ", ..."
			}
			return "", nil, fmt.Errorf("compat image has no entrypoint and %d .wasm files (%s%s); name the module in the entrypoint: %w",
				st.nWasm, strings.Join(st.wasm, ", "), more, errdefs.ErrInvalidArgument)
		}
		target = st.wasm[0]
	}
	want := absInImage(cfg.Config.WorkingDir, target)
	f, at, err := tree.OpenResolved(want)
	if err != nil {
		return "", nil, fmt.Errorf("the entrypoint names %s, which is not a regular file in the image layers: %w", clip(want), errdefs.ErrInvalidArgument)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", nil, err
	}
	if fi.Size() > maxSize {
		return "", nil, fmt.Errorf("module %s is %d bytes, over the %d-byte limit (%s): %w", at, fi.Size(), maxSize, keyMaxModuleSize, errdefs.ErrInvalidArgument)
	}
	module, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return "", nil, err
	}
	if int64(len(module)) > maxSize {
		return "", nil, fmt.Errorf("module %s is over the %d-byte limit (%s): %w", at, maxSize, keyMaxModuleSize, errdefs.ErrInvalidArgument)
	}
	return at, module, nil
}

// absInImage makes p absolute against dir, as an image entrypoint is.
func absInImage(dir, p string) string {
	if !path.IsAbs(p) {
		p = path.Join("/", dir, p)
	}
	return path.Clean(p)
}
