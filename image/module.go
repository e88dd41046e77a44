package image

import (
	"bytes"
	"fmt"

	"github.com/containerd/errdefs"
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
