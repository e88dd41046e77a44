package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
)

const pauseSrc = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
`

const helloSrc = `package main

import "os"

func main() { os.Stdout.WriteString("Hello from a container!\n") }
`

// linuxImage builds a one-layer linux/amd64 image of a static binary.
func linuxImage(bin, name string) (*imagebuild.Built, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	layer, err := imagebuild.TarGz(map[string][]byte{name: data})
	if err != nil {
		return nil, err
	}
	b := &imagebuild.Built{}
	l := b.Add(ocispec.MediaTypeImageLayerGzip, layer)
	cfg := b.AddJSON(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		Config:   ocispec.ImageConfig{Entrypoint: []string{"/" + name}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID(layer)}},
	})
	b.SetManifest(ocispec.MediaTypeImageManifest, cfg, []ocispec.Descriptor{l}, nil)
	return b, nil
}

func diffID(gz []byte) digest.Digest {
	cmd := exec.Command("gzip", "-dc")
	cmd.Stdin = bytes.NewReader(gz)
	out, err := cmd.Output()
	if err != nil {
		panic(err)
	}
	return digest.FromBytes(out)
}

// containerdEnv is Debian's containerd with its CRI plugin and runc, set
// up to run host-network pods of static binaries from the loopback
// registry: no CNI, no overlayfs, oom_score_adj clamped (no
// CAP_SYS_RESOURCE here).
type containerdEnv struct {
	proc   *proc
	socket string
	image  string
}

func startContainerd(ctx context.Context, dir, registry string) (*containerdEnv, error) {
	for _, b := range []string{"containerd", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("%s is not installed (apt-get install containerd runc)", b)
		}
	}
	cdir := filepath.Join(dir, "containerd")
	pause, err := buildStatic(ctx, dir, "pause", pauseSrc)
	if err != nil {
		return nil, err
	}
	hello, err := buildStatic(ctx, dir, "hello", helloSrc)
	if err != nil {
		return nil, err
	}
	pauseRef, helloRef := registry+"/bench/pause:1", registry+"/bench/hello-linux:1"
	for ref, bin := range map[string]string{pauseRef: pause, helloRef: hello} {
		img, err := linuxImage(bin, filepath.Base(bin))
		if err != nil {
			return nil, err
		}
		if err := imagebuild.Push(ctx, ref, img, image.RegistryOptions{}, nil); err != nil {
			return nil, err
		}
	}
	hostsDir := filepath.Join(cdir, "certs.d")
	for _, name := range []string{registry, strings.Replace(registry, ":", "_", 1) + "_"} {
		os.MkdirAll(filepath.Join(hostsDir, name), 0o755)
		hosts := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", registry, registry)
		os.WriteFile(filepath.Join(hostsDir, name, "hosts.toml"), []byte(hosts), 0o644)
	}
	socket := filepath.Join(cdir, "containerd.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, filepath.Join(cdir, "root"), filepath.Join(cdir, "state"), socket, pauseRef, hostsDir, filepath.Join(cdir, "cni-bin"), filepath.Join(cdir, "cni-conf"))
	cfgPath := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	p, err := startProc(filepath.Join(dir, "containerd.log"), "containerd", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	env := &containerdEnv{proc: p, socket: socket, image: helloRef}
	err = waitFor("containerd socket", 30*time.Second, func() bool {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	return env, nil
}
