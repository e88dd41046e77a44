package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/wasm"
)

// prepare makes sure the image's module is compiled in the cache.
func (m *Manager) prepare(ctx context.Context, img *image.Image) (wasm.Compiled, error) {
	c, err := m.runtime.Prepare(ctx, img.Module.Digest, func() ([]byte, error) { return m.images.ReadModule(ctx, img) })
	switch {
	case errors.Is(err, wasm.ErrInvalidModule):
		return c, fmt.Errorf("image %s: %w: %w", img.ID, err, errdefs.ErrInvalidArgument)
	case errors.Is(err, wasm.ErrCompileLimit):
		return c, fmt.Errorf("image %s: %w: %w", img.ID, err, errdefs.ErrResourceExhausted)
	}
	return c, err
}

// compiledFor returns the compiled module of the image a container was
// created from, refusing an image that now holds another module.
func (m *Manager) compiledFor(ctx context.Context, imageID, moduleDigest string) (wasm.Compiled, error) {
	img, err := m.images.Get(imageID)
	if err != nil {
		return wasm.Compiled{}, fmt.Errorf("image %s is gone: %w", imageID, err)
	}
	if img.Module.Digest != digest.Digest(moduleDigest) {
		return wasm.Compiled{}, fmt.Errorf("image %s now holds module %s, not %s", imageID, img.Module.Digest, moduleDigest)
	}
	return m.prepare(ctx, img)
}
