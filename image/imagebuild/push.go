package imagebuild

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/image"
)

// Push uploads b to ref, children first.
func Push(ctx context.Context, ref string, b *Built, reg image.RegistryOptions, auth *image.Auth) error {
	named, err := image.ParseReference(ref)
	if err != nil {
		return err
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: reg.Hosts(ctx, auth)})
	pusher, err := resolver.Pusher(ctx, named.String())
	if err != nil {
		return image.RegistryError(named.String(), err)
	}
	for _, d := range b.order {
		if d.Digest == b.Root.Digest {
			continue
		}
		if err := pushBlob(ctx, pusher, d, b.Blobs[d.Digest]); err != nil {
			return image.RegistryError(named.String(), err)
		}
	}
	if err := pushBlob(ctx, pusher, b.Root, b.Blobs[b.Root.Digest]); err != nil {
		return image.RegistryError(named.String(), err)
	}
	return nil
}

func pushBlob(ctx context.Context, pusher interface {
	Push(context.Context, ocispec.Descriptor) (content.Writer, error)
}, d ocispec.Descriptor, data []byte) error {
	w, err := pusher.Push(ctx, d)
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("push %s: %w", d.Digest, err)
	}
	defer w.Close()
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("push %s: %w", d.Digest, err)
	}
	if err := w.Commit(ctx, d.Size, d.Digest); err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("push %s: %w", d.Digest, err)
	}
	return nil
}
