package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	clog "github.com/containerd/log"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testregistry"
	"github.com/wasmcri/wasmcri/wasm"
	bolt "go.etcd.io/bbolt"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// moduleCache is shared by every test's runtime: each module compiles once
// per test run, as on a node.
var moduleCache string

func TestMain(m *testing.M) {
	_ = clog.SetLevel("error")
	dir, err := os.MkdirTemp("", "wasmcri-modules-")
	if err != nil {
		panic(err)
	}
	moduleCache = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is a manager over real image and wasm layers, with images pulled
// from an in-process registry on 127.0.0.1.
type env struct {
	t      *testing.T
	dir    string
	db     *bolt.DB
	images *image.Service
	rt     *wasm.Runtime
	m      *Manager
	reg    string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), reg: testregistry.Start(t)}
	var err error
	if e.db, err = bolt.Open(filepath.Join(e.dir, "meta.db"), 0o600, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	if e.images, err = image.NewService(e.db, filepath.Join(e.dir, "content"), image.Options{}); err != nil {
		t.Fatal(err)
	}
	if e.rt, err = wasm.NewRuntime(moduleCache, wasm.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.rt.Close)
	e.m = e.manager()
	return e
}

func (e *env) manager() *Manager { return e.managerWith(Options{}) }

// managerWith opens a manager on the env's state with opts, its root dir
// and handlers set.
func (e *env) managerWith(opts Options) *Manager {
	e.t.Helper()
	opts.RootDir, opts.Handlers = filepath.Join(e.dir, "root"), []string{"wasmtime", "wasmtime-debug"}
	m, err := NewManager(e.db, e.images, e.rt, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	// Every manager a test opens shuts down, unmounting its roots.
	e.t.Cleanup(m.Shutdown)
	return m
}

// image pushes module as a compat image and pulls it.
func (e *env) image(name string, module []byte) string {
	e.t.Helper()
	ref := e.reg + "/test/" + name + ":1"
	b, err := imagebuild.BuildCompat(module, imagebuild.CompatOptions{ModulePath: "/" + name + ".wasm", Env: []string{"FROM_IMAGE=yes", "OVERRIDE=image"}})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := imagebuild.Push(context.Background(), ref, b, image.RegistryOptions{}, nil); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.images.Pull(context.Background(), ref, nil); err != nil {
		e.t.Fatal(err)
	}
	return ref
}

func (e *env) sandbox(name string) Sandbox {
	e.t.Helper()
	sb, err := e.m.RunSandbox(context.Background(), podConfig(name, e.dir), "")
	if err != nil {
		e.t.Fatal(err)
	}
	return sb
}

func podConfig(name, dir string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: name + "-uid"},
		LogDirectory: filepath.Join(dir, "pods", name),
		Labels:       map[string]string{"app": name},
	}
}

func (e *env) container(sb Sandbox, name, img string, args ...string) Container {
	e.t.Helper()
	c, err := e.m.CreateContainer(context.Background(), sb.ID, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: img},
		Args:     args,
		Envs:     []*runtimeapi.KeyValue{{Key: "OVERRIDE", Value: []byte("container")}},
		LogPath:  name + ".log",
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) waitExited(id string, within time.Duration) Container {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := e.m.Container(id)
		if err != nil {
			e.t.Fatal(err)
		}
		if c.State == ContainerExited {
			return c
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s still %s after %v", id, c.State, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// start creates and starts a container from cfg in sb.
func (e *env) start(sb Sandbox, cfg *runtimeapi.ContainerConfig) Container {
	e.t.Helper()
	c, err := e.m.CreateContainer(context.Background(), sb.ID, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.m.StartContainer(context.Background(), c.ID); err != nil {
		e.t.Fatal(err)
	}
	return c
}

func ctrConfig(name, img string, args ...string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: img},
		Args:     args,
		Envs:     []*runtimeapi.KeyValue{{Key: "SECRET", Value: []byte("s3")}},
		LogPath:  name + ".log",
	}
}

// waitFor polls cond until it holds, failing the test after a generous
// bound (only a broken runtime takes that long).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
