package daemon

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	"github.com/wasmcri/wasmcri/internal/testregistry"
)

// A compiled module lives as long as an image holds its module: pulled,
// it is compiled; removed with the last image holding the module, it goes;
// one no image holds (planted, as a crash or an older wasmcri leaves it)
// goes at start-up.
func TestCompiledModulesGoWithTheirImages(t *testing.T) {
	cfg := testConfig(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	reg := testregistry.Start(t)
	module := testmodule.Wat(t, testmodule.Print)
	compiled := func() []string {
		t.Helper()
		names, _ := filepath.Glob(filepath.Join(cfg.Root, "modules", "*", "*.cwasm"))
		for i, n := range names {
			names[i] = filepath.Base(n)
		}
		return names
	}
	want := "sha256-" + digest.FromBytes(module).Encoded() + ".cwasm"

	// Two images of one module: an artifact and a compat image.
	artifact, compat := reg+"/m/artifact:1", reg+"/m/compat:1"
	if err := imagebuild.Push(ctx, artifact, imagebuild.BuildArtifact(module, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer), image.RegistryOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	b, err := imagebuild.BuildCompat(module, imagebuild.CompatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := imagebuild.Push(ctx, compat, b, image.RegistryOptions{}, nil); err != nil {
		t.Fatal(err)
	}

	d, err := Start(cfg, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{artifact, compat} {
		if _, err := d.Images.Pull(ctx, ref, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := compiled(); len(got) != 1 || got[0] != want {
		t.Fatalf("compiled after two pulls of one module: %q, want [%s]", got, want)
	}
	if err := d.Images.Remove(ctx, artifact); err != nil {
		t.Fatal(err)
	}
	if got := compiled(); len(got) != 1 {
		t.Errorf("compiled after removing one of the two images: %q, want it kept", got)
	}
	if err := d.Images.Remove(ctx, compat); err != nil {
		t.Fatal(err)
	}
	if got := compiled(); len(got) != 0 {
		t.Errorf("compiled after removing the last image of the module: %q", got)
	}

	// Pulled again, then a compiled module of no image planted beside it.
	if _, err := d.Images.Pull(ctx, artifact, nil); err != nil {
		t.Fatal(err)
	}
	d.Stop(time.Second)
	held, _ := filepath.Glob(filepath.Join(cfg.Root, "modules", "*", want))
	if len(held) != 1 {
		t.Fatalf("compiled module after the second pull: %q", held)
	}
	orphan := filepath.Join(filepath.Dir(held[0]), "sha256-"+digest.FromString("gone").Encoded()+".cwasm")
	b2, err := os.ReadFile(held[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(orphan, b2, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err = Start(cfg, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop(time.Second)
	if got := compiled(); len(got) != 1 || got[0] != want {
		t.Errorf("compiled after a restart: %q, want only [%s]", got, want)
	}
}
