package bench

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	clog "github.com/containerd/log"
	"github.com/wasmcri/wasmcri/config"
	"github.com/wasmcri/wasmcri/daemon"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testcni"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	"github.com/wasmcri/wasmcri/internal/testregistry"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func benchFloor(b *testing.B, module []byte) {
	f, err := NewFloor(module, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := f.Run("exit", "0"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloorTiny is wasmtime alone running the tiny module.
func BenchmarkFloorTiny(b *testing.B) { benchFloor(b, Wat(TinyExitWAT)) }

// BenchmarkFloorGo is wasmtime alone running the Go example (hello exit 0).
func BenchmarkFloorGo(b *testing.B) { benchFloor(b, testmodule.Hello(b)) }

// benchPodStart runs pods of module over an in-process wasmcri's socket,
// cache warm: RunPodSandbox + CreateContainer + StartContainer until exit.
// The pods use the node's network: this is the runtime's own part (the
// driver times pods on the pod network beside it).
func benchPodStart(b *testing.B, module []byte) {
	c, ref := startDaemon(b, module)
	ctx := context.Background()
	if _, err := c.RunPod(ctx, PodOptions{Image: ref, HostNetwork: true, Wait: true}); err != nil { // compiles
		b.Fatal(err)
	}
	var sandboxes []string
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t, err := c.RunPod(ctx, PodOptions{Image: ref, Args: []string{"exit", "0"}, HostNetwork: true, Wait: true})
		if err != nil {
			b.Fatal(err)
		}
		sandboxes = append(sandboxes, t.SandboxID)
	}
	b.StopTimer()
	for _, id := range sandboxes {
		c.RemovePod(ctx, id)
	}
}

func BenchmarkPodStartTiny(b *testing.B) { benchPodStart(b, Wat(TinyExitWAT)) }
func BenchmarkPodStartGo(b *testing.B)   { benchPodStart(b, testmodule.Hello(b)) }

// startDaemon runs wasmcri in this process on temp dirs, with module
// pulled as an image, and connects to it.
func startDaemon(b *testing.B, module []byte) (*Client, string) {
	b.Helper()
	clog.SetLevel("error")
	sockDir, err := os.MkdirTemp("", "wcri")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(sockDir) })
	cfg := config.Default()
	dir := b.TempDir()
	cfg.Root, cfg.State, cfg.GRPC.Address = filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(sockDir, "cri.sock")
	cfg.Network.CNIBinDirs = testcni.Require(b)
	cfg.Network.CNIConfDir = filepath.Join(dir, "net.d")
	cfg.Network.DefaultBridge, cfg.Network.DefaultSubnet = testcni.Network(b, "10.254")
	testcni.UnpinAtEnd(b, filepath.Join(cfg.State, "netns"))
	d, err := daemon.Start(cfg, "bench", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Stop(time.Second) })
	reg := testregistry.Start(b)
	ref := reg + "/bench/module:1"
	if err := imagebuild.Push(context.Background(), ref, imagebuild.BuildArtifact(module, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer), image.RegistryOptions{}, nil); err != nil {
		b.Fatal(err)
	}
	c, err := Dial(cfg.GRPC.Address, true)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	if err := c.Pull(context.Background(), ref); err != nil {
		b.Fatal(err)
	}
	return c, ref
}

// BenchmarkList1000 times kubelet's relist and stats calls with 1,000
// running idle containers, end to end over the socket (the server's part
// alone is cri.BenchmarkList1000).
func BenchmarkList1000(b *testing.B) {
	c, ref := startDaemon(b, Wat(TinySleepWAT))
	ctx := context.Background()
	logs := b.TempDir()
	var ids []string
	for i := 0; i < 1000; i++ {
		t, err := c.RunPod(ctx, PodOptions{Image: ref, HostNetwork: true, LogDirectory: logs})
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, t.SandboxID)
	}
	defer func() {
		for _, id := range ids {
			c.RemovePod(ctx, id)
		}
	}()
	for name, call := range map[string]func() error{
		"ListPodSandbox": func() error {
			_, err := c.RT.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
			return err
		},
		"ListContainers": func() error {
			_, err := c.RT.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			return err
		},
		"ListContainerStats": func() error {
			_, err := c.RT.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{})
			return err
		},
		"ListPodSandboxStats": func() error {
			_, err := c.RT.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{})
			return err
		},
	} {
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if err := call(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
