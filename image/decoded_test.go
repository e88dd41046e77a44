package image_test

import (
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	. "github.com/wasmcri/wasmcri/image"
)

// Get serves records from memory, but always as stored now: a change to
// the record shows at once, a caller changing what Get returned changes
// nothing, and a removed image is gone under every name.
func TestGetFollowsTheRecord(t *testing.T) {
	s := newService(t, t.TempDir(), Options{})
	id := digest.FromString("config").String()
	img := &Image{ID: id, Format: FormatArtifact, RepoTags: []string{"docker.io/x/a:1"}, Env: []string{"A=1"},
		Labels: map[string]string{"l": "1"}, Module: Module{Digest: digest.FromBytes(moduleNamed("A"))}}
	if _, err := s.Record(img, nil); err != nil {
		t.Fatal(err)
	}
	// Every spelling, twice each: the second is served from memory.
	for range 2 {
		for _, ref := range []string{"x/a:1", "docker.io/x/a:1", id, id[len("sha256:"):], id[len("sha256:") : len("sha256:")+8]} {
			if got := mustGet(t, s, ref); got.ID != id {
				t.Fatalf("%s: %s", ref, got.ID)
			}
		}
	}
	got := mustGet(t, s, "x/a:1")
	got.Env[0], got.Labels["l"], got.RepoTags = "A=changed", "changed", nil
	if again := mustGet(t, s, "x/a:1"); again.Env[0] != "A=1" || again.Labels["l"] != "1" || len(again.RepoTags) != 1 {
		t.Fatalf("a caller's change reached the store: %+v", again)
	}
	edit(t, s, id, func(img *Image) { img.Env = append(img.Env, "B=2") })
	if again := mustGet(t, s, "x/a:1"); !slices.Equal(again.Env, []string{"A=1", "B=2"}) {
		t.Fatalf("a changed record was not seen: %v", again.Env)
	}
	if err := s.Remove(t.Context(), "x/a:1"); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"x/a:1", id} {
		if _, err := s.Get(ref); !errdefs.IsNotFound(err) {
			t.Fatalf("%s after remove: %v", ref, err)
		}
	}
}
