package image

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
)

// ParseReference normalizes an image name the way kubelet and containerd do:
// "hello" becomes "docker.io/library/hello:latest"; a digest reference keeps
// its digest and drops any tag.
func ParseReference(s string) (reference.Named, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("image reference is empty: %w", errdefs.ErrInvalidArgument)
	}
	named, err := reference.ParseDockerRef(s)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	return named, nil
}

// repoDigest is "repo@digest", the form CRI reports in repo_digests.
func repoDigest(named reference.Named, dgst string) string {
	return named.Name() + "@" + dgst
}
