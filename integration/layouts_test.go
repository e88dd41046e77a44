package integration

import (
	"bytes"
	"compress/gzip"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// Every Wasm image layout in use is pulled from docker-registry, listed and
// run through crictl; what is not a core Wasm module is refused, saying
// what was found.
func TestEveryWasmLayout(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	hello := testmodule.Hello(t)
	mustCompat := func(opts imagebuild.CompatOptions) *imagebuild.Built {
		b, err := imagebuild.BuildCompat(hello, opts)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	linux := &imagebuild.Built{}
	cfg := linux.AddJSON(ocispec.MediaTypeImageConfig, ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}})
	layer := linux.Add(ocispec.MediaTypeImageLayerGzip, []byte("a linux layer"))
	linux.SetManifest(ocispec.MediaTypeImageManifest, cfg, []ocispec.Descriptor{layer}, nil)

	layouts := []struct {
		name  string
		image *imagebuild.Built
		argv0 string
	}{
		{"cncf-artifact", imagebuild.BuildArtifact(hello, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer), "cncf-artifact"},
		{"cncf-artifact-with-artifact-type", imagebuild.BuildArtifactOf(hello, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer, image.MediaTypeWasmConfigV0), "cncf-artifact-with-artifact-type"},
		{"wasm-to-oci-v1-config", imagebuild.BuildArtifact(hello, image.MediaTypeWasmConfigV1, image.MediaTypeWasmLayerV1), "wasm-to-oci-v1-config"},
		{"wasm-to-oci-v0-config", imagebuild.BuildArtifact(hello, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayerV1), "wasm-to-oci-v0-config"},
		{"compat-wasip1-annotated", mustCompat(imagebuild.CompatOptions{ModulePath: "/app.wasm", Annotations: map[string]string{image.AnnotationCompatVariant: "compat"}}), "/app.wasm"},
		{"compat-wasi-plain", mustCompat(imagebuild.CompatOptions{ModulePath: "/app.wasm", OS: "wasi"}), "/app.wasm"},
		{"compat-docker-schema2", mustCompat(imagebuild.CompatOptions{ModulePath: "/app.wasm", Docker: true}), "/app.wasm"},
		{"compat-uncompressed", mustCompat(imagebuild.CompatOptions{ModulePath: "/app.wasm", Uncompressed: true}), "/app.wasm"},
		{"compat-no-entrypoint", mustCompat(imagebuild.CompatOptions{ModulePath: "/srv/only.wasm", Entrypoint: []string{}}), "/srv/only.wasm"},
		{"index-linux-and-wasm", imagebuild.BuildIndex(
			imagebuild.IndexEntry{Image: linux, Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}},
			imagebuild.IndexEntry{Image: mustCompat(imagebuild.CompatOptions{ModulePath: "/app.wasm"}), Platform: ocispec.Platform{OS: "wasip1", Architecture: "wasm"}},
		), "/app.wasm"},
		{"compat-entrypoint-symlink", symlinkImage(t, hello), "/usr/bin/hello"},
	}
	ctx := context.Background()
	pod := strings.TrimSpace(d.must("runp", podJSON(t, "layouts")))
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			ref := reg + "/layouts/" + l.name + ":v1"
			if err := imagebuild.Push(ctx, ref, l.image, image.RegistryOptions{}, nil); err != nil {
				t.Fatal(err)
			}
			d.must("pull", ref)
			if images := d.must("images"); !strings.Contains(images, reg+"/layouts/"+l.name) {
				t.Fatalf("not listed:\n%s", images)
			}
			ctr := strings.TrimSpace(d.must("create", pod, containerJSON(t, l.name, ref, []string{"layout-check"}, nil), podJSON(t, "layouts")))
			d.must("start", ctr)
			d.waitState(ctr, "CONTAINER_EXITED", 20*time.Second)
			if logs := d.must("logs", ctr); !strings.Contains(logs, `args: ["`+l.argv0+`" "layout-check"]`) {
				t.Errorf("the module did not run as %s:\n%s", l.argv0, logs)
			}
		})
	}

	for _, bad := range []struct {
		name  string
		image *imagebuild.Built
		says  string
	}{
		{"linux", linux, "platform linux/amd64"},
		{"linux-index", imagebuild.BuildIndex(imagebuild.IndexEntry{Image: linux, Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}}), "holds linux/amd64"},
		{"component", imagebuild.BuildArtifactOf([]byte("\x00asm\x0d\x00\x01\x00"), image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer, "application/vnd.wasm.component.v1+wasm"), "components are not yet supported"},
	} {
		ref := reg + "/refused/" + bad.name + ":v1"
		if err := imagebuild.Push(ctx, ref, bad.image, image.RegistryOptions{}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := d.run("pull", ref); err == nil || !strings.Contains(err.Error(), "InvalidArgument") || !strings.Contains(err.Error(), bad.says) {
			t.Errorf("pull of %s: %v; want InvalidArgument saying %q", bad.name, err, bad.says)
		}
	}
}

// symlinkImage is a compat image whose entrypoint /usr/bin/hello is a
// symlink to the module at /opt/app/hello.wasm.
func symlinkImage(t *testing.T, module []byte) *imagebuild.Built {
	t.Helper()
	layer, err := imagebuild.TarGzEntries([]imagebuild.TarEntry{
		{Name: "opt/app/hello.wasm", Data: module},
		{Name: "usr/bin/hello", Link: "../../opt/app/hello.wasm"},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The config names the layer's uncompressed digest, as every image
	// builder writes it: wasmcri checks the layer against it.
	gz, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	diffID, err := digest.FromReader(gz)
	if err != nil {
		t.Fatal(err)
	}
	b := &imagebuild.Built{}
	l := b.Add(ocispec.MediaTypeImageLayerGzip, layer)
	cfg := b.AddJSON(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: ocispec.Platform{OS: "wasip1", Architecture: "wasm"},
		Config:   ocispec.ImageConfig{Entrypoint: []string{"/usr/bin/hello"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
	})
	b.SetManifest(ocispec.MediaTypeImageManifest, cfg, []ocispec.Descriptor{l}, nil)
	return b
}
