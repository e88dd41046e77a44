package cri

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	"github.com/wasmcri/wasmcri/internal/testregistry"
	"github.com/wasmcri/wasmcri/sandbox"
	"github.com/wasmcri/wasmcri/wasm"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BenchmarkList1000 is the server's part of kubelet's list calls with
// 1,000 idle running pods labelled as kubelet labels them: the handler
// and the encoding gRPC then does, without the transport or the client's
// decoding (bench.BenchmarkList1000 has those).
func BenchmarkList1000(b *testing.B) {
	s := listServer(b, 1000)
	ctx := context.Background()
	for _, c := range []struct {
		name string
		call func() (proto.Message, error)
	}{
		{"ListPodSandbox", func() (proto.Message, error) {
			return s.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		}},
		{"ListContainers", func() (proto.Message, error) {
			return s.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		}},
		{"ListContainerStats", func() (proto.Message, error) {
			return s.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{})
		}},
		{"ListPodSandboxStats", func() (proto.Message, error) {
			return s.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{})
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.call()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := proto.Marshal(resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// listServer is a server over real sandbox, image and wasm layers with
// pods idle pods running.
func listServer(b *testing.B, pods int) *Server {
	dir := b.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	images, err := image.NewService(db, filepath.Join(dir, "content"), image.Options{Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	rt, err := wasm.NewRuntime(filepath.Join(dir, "modules"), wasm.Options{Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(rt.Close)
	m, err := sandbox.NewManager(db, images, rt, sandbox.Options{RootDir: filepath.Join(dir, "root"), Handlers: []string{"wasmtime"}, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(m.Shutdown)
	s := NewServer(m, images, nil, Info{Version: "bench", Handlers: []string{"wasmtime"}}, log)

	ctx := context.Background()
	ref := testregistry.Start(b) + "/bench/idle:1"
	module := testmodule.Wat(b, testmodule.SleepHour)
	if err := imagebuild.Push(ctx, ref, imagebuild.BuildArtifact(module, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer), image.RegistryOptions{}, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := s.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		b.Fatal(err)
	}
	for i := range pods {
		name, uid := fmt.Sprintf("app-%d-7d4b9c8f6d-x2x9q", i), fmt.Sprintf("3f0d6c1e-8a2b-4c5d-9e7f-%012d", i)
		podLabels := map[string]string{"app": "app", "pod-template-hash": "7d4b9c8f6d",
			"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": uid}
		sb, err := s.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: &runtimeapi.PodSandboxConfig{
			Metadata:    &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: uid},
			Labels:      podLabels,
			Annotations: map[string]string{"kubernetes.io/config.seen": "2026-01-01T00:00:00Z", "kubernetes.io/config.source": "api"},
		}})
		if err != nil {
			b.Fatal(err)
		}
		c, err := s.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Image:    &runtimeapi.ImageSpec{Image: ref},
			Labels: map[string]string{"io.kubernetes.container.name": "app", "io.kubernetes.pod.name": name,
				"io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": uid},
			Annotations: map[string]string{"io.kubernetes.container.hash": "6c1e8a2b", "io.kubernetes.container.restartCount": "0",
				"io.kubernetes.container.terminationMessagePath":   "/dev/termination-log",
				"io.kubernetes.container.terminationMessagePolicy": "File", "io.kubernetes.pod.terminationGracePeriod": "30"},
		}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			b.Fatal(err)
		}
	}
	return s
}
