package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/internal/inroot"
)

// maxMetadataSize bounds manifests, indexes and configs, as containerd does.
const maxMetadataSize = 4 << 20

// Pull fetches ref from its registry, checks that it is a Wasm image in a
// known layout, and records it. Concurrent pulls of one reference with the
// same credentials share one download.
func (s *Service) Pull(ctx context.Context, ref string, auth *Auth) (*Image, error) {
	named, err := ParseReference(ref)
	if err != nil {
		return nil, err
	}
	key := named.String()
	if auth != nil {
		key += "\x00" + auth.Username + "\x00" + auth.Password + "\x00" + auth.IdentityToken + "\x00" + auth.RegistryToken
	}
	ch := s.pulls.DoChan(key, func() (any, error) {
		// The shared pull outlives any one caller's cancellation.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.PullTimeout)
		defer cancel()
		return s.pull(pctx, named, auth)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Image), nil
	case <-ctx.Done():
		return nil, RegistryError(named.String(), ctx.Err())
	}
}

// pull is one download; see Pull.
type pull struct {
	s       *Service
	ref     string
	fetcher remotes.Fetcher
	cs      content.Store
	blobs   []digest.Digest
	sizes   map[digest.Digest]int64
	size    int64
	release []func()
	// compiled says checkModule has compiled the module.
	compiled bool
}

func (s *Service) pull(ctx context.Context, named reference.Named, auth *Auth) (*Image, error) {
	ref := named.String()
	log := s.opts.Logger.With("image", ref)
	start := time.Now()
	log.Info("pulling image")

	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: s.opts.Registry.Hosts(ctx, auth)})
	name, root, err := resolver.Resolve(ctx, ref)
	if err != nil {
		err = RegistryError(ref, err)
		log.Warn("pull failed", "error", err)
		return nil, err
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		return nil, RegistryError(ref, err)
	}
	p := &pull{s: s, ref: ref, fetcher: fetcher, cs: s.content}
	img, err := p.run(ctx, named, root)
	p.done(ctx, err)
	if err != nil {
		log.Warn("pull failed", "digest", root.Digest, "error", err)
		return nil, err
	}
	log.Info("pulled image", "digest", root.Digest, "id", img.ID, "format", img.Format,
		"module", img.Module.Digest, "bytes", img.Size, "duration", time.Since(start).Round(time.Millisecond))
	return img, nil
}

// done ends the pull's leases. When the image was refused for what it
// holds, the blobs it fetched go too, unless an image or another pull
// holds them: a hostile registry's images do not pile up on disk, pull
// after refused pull. A pull that failed otherwise (a timeout, the
// registry going away) keeps them, for its retry to find.
func (p *pull) done(ctx context.Context, err error) {
	for _, r := range p.release {
		r()
	}
	if !errdefs.IsInvalidArgument(err) && !errdefs.IsConflict(err) {
		return
	}
	if ferr := p.s.free(context.WithoutCancel(ctx), p.blobs); ferr != nil {
		p.s.opts.Logger.Warn("free blobs of a refused image", "image", p.ref, "error", ferr)
	}
}

// fetch stores desc in the content store (digest and size verified by the
// content writer) and returns its bytes when asked to read it back.
func (p *pull) fetch(ctx context.Context, desc ocispec.Descriptor, limit int64, read bool) ([]byte, error) {
	if desc.Size > limit {
		return nil, fmt.Errorf("%s: blob %s (%s) is %d bytes, over the %d-byte limit: %w",
			p.ref, desc.Digest, desc.MediaType, desc.Size, limit, errdefs.ErrInvalidArgument)
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("%s: descriptor digest %q: %v: %w", p.ref, desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	p.keep(desc.Digest, desc.Size)
	if err := remotes.Fetch(ctx, p.cs, p.fetcher, desc); err != nil && !errdefs.IsAlreadyExists(err) {
		err = fmt.Errorf("fetch %s: %w", desc.Digest, err)
		if _, local := p.fetcher.(*Layout); local {
			return nil, fmt.Errorf("%s: %w", p.ref, err)
		}
		return nil, RegistryError(p.ref, err)
	}
	if !read {
		return nil, nil
	}
	return content.ReadBlob(ctx, p.cs, desc)
}

// keep leases a blob for the pull and counts it in the image.
func (p *pull) keep(d digest.Digest, size int64) {
	for _, b := range p.blobs {
		if b == d {
			return
		}
	}
	p.blobs = append(p.blobs, d)
	if p.sizes == nil {
		p.sizes = map[digest.Digest]int64{}
	}
	p.sizes[d] = size
	p.size += size
	p.release = append(p.release, p.s.lease(d))
}

func (p *pull) run(ctx context.Context, named reference.Named, root ocispec.Descriptor) (*Image, error) {
	manifestDesc := root
	switch {
	case isIndex(root.MediaType):
		b, err := p.fetch(ctx, root, maxMetadataSize, true)
		if err != nil {
			return nil, err
		}
		var idx ocispec.Index
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("%s: index %s: %v: %w", p.ref, root.Digest, err, errdefs.ErrInvalidArgument)
		}
		if manifestDesc, err = chooseManifest(p.ref, idx); err != nil {
			return nil, err
		}
	case isManifest(root.MediaType):
	default:
		return nil, fmt.Errorf("%s: unsupported manifest media type %q: %w", p.ref, root.MediaType, errdefs.ErrInvalidArgument)
	}

	b, err := p.fetch(ctx, manifestDesc, maxMetadataSize, true)
	if err != nil {
		return nil, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: manifest %s: %v: %w", p.ref, manifestDesc.Digest, err, errdefs.ErrInvalidArgument)
	}
	configJSON, err := p.fetch(ctx, m.Config, maxMetadataSize, true)
	if err != nil {
		return nil, err
	}
	format, cfg, err := classify(p.ref, m, configJSON)
	if err != nil {
		return nil, err
	}
	if format == FormatCompat {
		if err := checkDiffIDs(p.ref, m, cfg); err != nil {
			return nil, err
		}
		// Compressed layers no smaller than the unpacked limit (give or
		// take gzip's framing) are refused before they are downloaded.
		var total int64
		for _, l := range m.Layers {
			total += max(l.Size, 0)
		}
		if limit := p.s.opts.MaxUnpackedSize; total > limit+limit/64+1<<20 {
			return nil, fmt.Errorf("%s: its layers are %d bytes compressed, more than they may unpack to (%d bytes, the %s limit): %w",
				p.ref, total, limit, keyMaxUnpackedSize, errdefs.ErrInvalidArgument)
		}
	}
	for _, l := range m.Layers {
		if _, err := p.fetch(ctx, l, p.s.opts.MaxLayerSize, false); err != nil {
			return nil, err
		}
	}

	img := &Image{
		ID:             imageID(format, m, manifestDesc),
		ManifestDigest: manifestDesc.Digest,
		Format:         format,
		Annotations:    m.Annotations,
		RepoDigests:    []string{repoDigest(named, root.Digest.String())},
		PulledAt:       time.Now().UTC(),
	}
	if tagged, ok := named.(reference.Tagged); ok {
		img.RepoTags = []string{named.Name() + ":" + tagged.Tag()}
	}

	switch format {
	case FormatArtifact:
		layer := m.Layers[0]
		if layer.Size > p.s.opts.MaxModuleSize {
			return nil, fmt.Errorf("%s: module %s is %d bytes, over the %d-byte limit (%s): %w",
				p.ref, layer.Digest, layer.Size, p.s.opts.MaxModuleSize, keyMaxModuleSize, errdefs.ErrInvalidArgument)
		}
		module, err := content.ReadBlob(ctx, p.cs, layer)
		if err != nil {
			return nil, err
		}
		if err := p.checkModule(ctx, module); err != nil {
			return nil, err
		}
		img.Module = Module{Digest: layer.Digest, Size: layer.Size, Name: path.Base(reference.Path(named))}
	case FormatCompat:
		c := cfg.Config
		img.Entrypoint, img.Cmd, img.Env, img.WorkingDir, img.User, img.Labels = c.Entrypoint, c.Cmd, c.Env, c.WorkingDir, c.User, c.Labels
		unlock, err := p.s.ids.lock(ctx, img.ID)
		if err != nil {
			return nil, p.stopped(err)
		}
		defer unlock()
		if err := p.unpack(ctx, img, m, cfg); err != nil {
			return nil, p.stopped(err)
		}
	}
	img.Blobs, img.Size = p.blobs, p.size
	if img.Unpacked != nil {
		img.Size += img.Unpacked.Bytes
	}
	if !p.compiled {
		// Pulled before with the same files: compiled then, unless the
		// compile cache has been dropped since (a wasmtime upgrade).
		desc := ocispec.Descriptor{MediaType: MediaTypeWasmLayer, Digest: img.Module.Digest, Size: img.Module.Size}
		if err := p.compile(ctx, desc.Digest, func() ([]byte, error) { return content.ReadBlob(ctx, p.cs, desc) }); err != nil {
			return nil, err
		}
	}
	return p.s.record(img, p.sizes)
}

// checkModule refuses what is not a WebAssembly module wasmcri can run,
// and compiles it: a container start then never does.
func (p *pull) checkModule(ctx context.Context, module []byte) error {
	if err := checkModuleHeader(p.ref, module); err != nil {
		return err
	}
	if p.s.opts.Validate != nil {
		if err := p.s.opts.Validate(module); err != nil {
			return fmt.Errorf("%s: the module is not valid WebAssembly: %s: %w", p.ref, err, errdefs.ErrInvalidArgument)
		}
	}
	if err := p.compile(ctx, digestOf(module), func() ([]byte, error) { return module, nil }); err != nil {
		return err
	}
	p.compiled = true
	return nil
}

// compile makes the module ready to run, naming the image in a failure.
func (p *pull) compile(ctx context.Context, d digest.Digest, load func() ([]byte, error)) error {
	if p.s.opts.Compile == nil {
		return nil
	}
	if err := p.s.opts.Compile(ctx, d, load); err != nil {
		return fmt.Errorf("%s: module %s: %w", p.ref, d, err)
	}
	return nil
}

// stopped words an error of the pull's own context as a pull timeout or
// cancellation, and names the image in any other.
func (p *pull) stopped(err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return RegistryError(p.ref, err)
	}
	return fmt.Errorf("%s: %w", p.ref, err)
}

// unpack gives a compat image its files and finds its module in them,
// with the image ID's lock held. Its layers are checked against their diff
// IDs and unpacked, within the limits, into the image's directory, unless
// a recorded image of the same ID has them there already: then the layers
// are only checked (or not even that, for the very manifest it was pulled
// with), since one config names one set of uncompressed layers.
func (p *pull) unpack(ctx context.Context, img *Image, m ocispec.Manifest, cfg *ocispec.Image) error {
	s := p.s
	dir, err := s.fsPath(img.ID)
	if err != nil {
		return err
	}
	old, err := s.byID(img.ID)
	if err != nil {
		return err
	}
	if old != nil && old.Format != img.Format {
		// Refused before anything touches the files of the other image.
		return sameContent(old, img)
	}
	_, statErr := os.Stat(dir)
	unpacked := old != nil && old.Unpacked != nil && statErr == nil

	if unpacked && old.ManifestDigest == img.ManifestDigest {
		if _, err := s.content.Info(ctx, old.Module.Digest); err == nil {
			img.Module, img.Unpacked = old.Module, old.Unpacked
			p.keep(old.Module.Digest, old.Module.Size)
			return nil
		}
	}

	var modPath string
	var module []byte
	if unpacked {
		if err := checkLayers(ctx, s.content, m, cfg, s.budget()); err != nil {
			return err
		}
		tree, err := inroot.Open(dir)
		if err != nil {
			return err
		}
		defer tree.Close()
		st, err := statTree(dir)
		if err != nil {
			return err
		}
		if modPath, module, err = findModule(tree, cfg, st, s.opts.MaxModuleSize); err != nil {
			return err
		}
		img.Unpacked = old.Unpacked
	} else {
		var st treeStats
		err := s.unpackInto(dir, func(tree *inroot.Root) error {
			if err := unpackLayers(ctx, s.content, m, cfg, tree, s.budget()); err != nil {
				return err
			}
			var err error
			if st, err = statTree(tree.Path()); err != nil {
				return err
			}
			if modPath, module, err = findModule(tree, cfg, st, s.opts.MaxModuleSize); err != nil {
				return err
			}
			if err := p.checkModule(ctx, module); err != nil {
				return err
			}
			// Refused before the files take the ID's place.
			if old != nil && old.Module.Digest != digestOf(module) {
				img.Module.Digest = digestOf(module)
				return sameContent(old, img)
			}
			return nil
		}, &st)
		if err != nil {
			return err
		}
		img.Unpacked = &st.Unpacked
	}
	img.Module = Module{Digest: digestOf(module), Size: int64(len(module)), Name: modPath}
	// The module is content of its own, so containers load it without
	// reading the layers or the files again.
	desc := ocispec.Descriptor{MediaType: MediaTypeWasmLayer, Digest: img.Module.Digest, Size: img.Module.Size}
	p.keep(desc.Digest, desc.Size)
	if err := content.WriteBlob(ctx, p.cs, "module-"+desc.Digest.Encoded(), bytes.NewReader(module), desc); err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("store module: %w", err)
	}
	return nil
}

func digestOf(b []byte) digest.Digest { return digest.FromBytes(b) }

// imageID is the config digest, as containerd's, for compat images. Wasm
// artifacts are identified by their manifest instead: their configs can be
// byte-identical ("{}") across unrelated modules.
func imageID(format Format, m ocispec.Manifest, manifest ocispec.Descriptor) string {
	if format == FormatArtifact {
		return manifest.Digest.String()
	}
	return m.Config.Digest.String()
}
