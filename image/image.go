// Package image pulls Wasm images from OCI registries into a
// content-addressed store, keeps their metadata in bbolt, and finds the
// WebAssembly module each image runs.
package image

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// Image is what the runtime knows of one pulled image. Its ID is the digest
// of the image config (of the manifest for Wasm artifacts), so that the same
// image pulled under two names is one image with two tags.
type Image struct {
	ID             string        `json:"id"`
	RepoTags       []string      `json:"repoTags,omitempty"`
	RepoDigests    []string      `json:"repoDigests,omitempty"`
	ManifestDigest digest.Digest `json:"manifestDigest"`
	Format         Format        `json:"format"`
	// Size is the bytes the image takes on disk: its blobs in the content
	// store and, once unpacked, its files (Unpacked.Bytes).
	Size int64 `json:"size"`
	// Blobs are every content digest the image holds, for garbage collection.
	Blobs []digest.Digest `json:"blobs"`
	// Unpacked is what the image's unpacked files take: a compat image's
	// from its pull on, an artifact's once it is used as an image volume;
	// nil before (and for images recorded before unpacking moved to pull
	// time, until their files are next asked for).
	Unpacked *Unpacked `json:"unpacked,omitempty"`

	Module Module `json:"module"`

	Entrypoint []string          `json:"entrypoint,omitempty"`
	Cmd        []string          `json:"cmd,omitempty"`
	Env        []string          `json:"env,omitempty"`
	WorkingDir string            `json:"workingDir,omitempty"`
	User       string            `json:"user,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	// Annotations are the manifest's annotations.
	Annotations map[string]string `json:"annotations,omitempty"`
	PulledAt    time.Time         `json:"pulledAt"`
}

// Module locates the WebAssembly module of an image in the content store.
type Module struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	// Name is argv[0] when neither the image nor the container gives a
	// command: the module's path in a compat image, the repository's last
	// path element for an artifact.
	Name string `json:"name"`
}

// Unpacked is the disk an image's unpacked files take: the bytes of its
// regular files and its inodes, hard links counted once.
type Unpacked struct {
	Bytes  int64 `json:"bytes"`
	Inodes int64 `json:"inodes"`
}
