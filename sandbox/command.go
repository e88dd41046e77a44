package sandbox

import (
	"path"
	"strings"

	"github.com/distribution/reference"

	"github.com/wasmcri/wasmcri/image"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// commandLine combines the image's entrypoint and cmd with the container's
// command and args by the Kubernetes rules: a container command replaces
// the entrypoint and drops the image cmd; container args replace the cmd.
// A Wasm artifact has no entrypoint of its own: the name it is run by
// stands in, so argv[0] is always there.
func commandLine(img *image.Image, cfg *runtimeapi.ContainerConfig) []string {
	entrypoint, cmd := img.Entrypoint, img.Cmd
	if img.Format == image.FormatArtifact {
		entrypoint = []string{artifactArgv0(img, cfg)}
	} else if len(entrypoint) == 0 && !(len(cmd) > 0 && path.Clean("/"+cmd[0]) == img.Module.Name) {
		entrypoint = []string{img.Module.Name}
	}
	if len(cfg.GetCommand()) > 0 {
		entrypoint, cmd = cfg.GetCommand(), nil
	}
	if len(cfg.GetArgs()) > 0 {
		cmd = cfg.GetArgs()
	}
	argv := make([]string, 0, len(entrypoint)+len(cmd))
	return append(append(argv, entrypoint...), cmd...)
}

// artifactArgv0 is the last path element of the repository the container
// names its image by: the user's image name (kubelet passes the image ID
// as the image and the pod's name for it as the user-specified image),
// else the image's first tag, else the name it was first pulled by.
func artifactArgv0(img *image.Image, cfg *runtimeapi.ContainerConfig) string {
	candidates := []string{cfg.GetImage().GetUserSpecifiedImage(), cfg.GetImage().GetImage()}
	candidates = append(candidates, img.RepoTags...)
	for _, ref := range candidates {
		if ref == "" || strings.HasPrefix(ref, "sha256:") || strings.HasPrefix(img.ID, "sha256:"+ref) {
			continue
		}
		if named, err := image.ParseReference(ref); err == nil {
			return path.Base(reference.Path(named))
		}
	}
	return img.Module.Name
}

// environment is the image's env overlaid by the container's, keeping the
// first position of each name as a shell would.
func environment(img *image.Image, cfg *runtimeapi.ContainerConfig) []string {
	var keys []string
	values := map[string]string{}
	set := func(k, v string) {
		if _, ok := values[k]; !ok {
			keys = append(keys, k)
		}
		values[k] = v
	}
	for _, kv := range img.Env {
		k, v := splitKV(kv)
		set(k, v)
	}
	for _, kv := range cfg.GetEnvs() {
		set(kv.GetKey(), string(kv.GetValue()))
	}
	env := make([]string, 0, len(keys))
	for _, k := range keys {
		env = append(env, k+"="+values[k])
	}
	return env
}

func splitKV(kv string) (string, string) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:]
		}
	}
	return kv, ""
}

func hasEnv(env []string, name string) bool {
	for _, kv := range env {
		if k, _ := splitKV(kv); k == name {
			return true
		}
	}
	return false
}
