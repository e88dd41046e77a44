package cri_test

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wasmcri/wasmcri/config"
	"github.com/wasmcri/wasmcri/internal/syncbuf"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PullImage compiles the image's module before it returns, so that no
// CreateContainer compiles: the daemon compiles once, at the pull, and the
// compiled module is in the cache when the pull returns.
func TestPullCompiles(t *testing.T) {
	var logs syncbuf.Buffer
	c := startWith(t, nil, &logs)
	ctx := context.Background()
	module := testmodule.Hello(t)
	ref := c.push(t, "compiled", module)
	if _, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), `msg="compiled module"`); n != 1 {
		t.Fatalf("%d compiles during the pull:\n%s", n, logs.String())
	}
	cached, _ := filepath.Glob(filepath.Join(c.root, "modules", "*", "sha256-"+digest.FromBytes(module).Encoded()+".cwasm"))
	if len(cached) != 1 {
		t.Errorf("compiled module in the cache after the pull: %q", cached)
	}
	// The same module under another name, pulled and run: no compile.
	_, id := c.runContainer(t, "after-pull", nil, "exit", "0")
	waitExited(t, c, id)
	if n := strings.Count(logs.String(), `msg="compiled module"`); n != 1 {
		t.Errorf("%d compiles after a pull, create and start; want the pull's one", n)
	}
}

// A module the node's compile limits refuse is refused at the pull, as
// ResourceExhausted naming the limit, and the image is not recorded. The
// limit leaves the compiler process's Go runtime room to read the module
// (megabytes), so that what runs out is the compile (over 100 MiB): under 8
// MiB Go's garbage collector itself could fail first, with a SIGSEGV that
// says nothing of memory, about every other run.
func TestPullRefusesWhatCannotCompile(t *testing.T) {
	c := startWith(t, func(cfg *config.Config) { cfg.Runtime.CompileMemoryLimit = 32 << 20 }, io.Discard)
	ctx := context.Background()
	ref := c.push(t, "costly", testmodule.Hello(t))
	_, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	wantCode(t, "pull of a module over compile_memory_limit", err, codes.ResourceExhausted)
	if !strings.Contains(err.Error(), "runtime.compile_memory_limit") {
		t.Errorf("the refusal does not name the limit: %v", err)
	}
	is, err := c.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil || is.Image != nil {
		t.Errorf("image status after a refused pull: %v, %v", is.GetImage(), err)
	}
}

// waitExited polls until the container has exited.
func waitExited(t *testing.T, c clients, id string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := c.rt.ContainerStatus(context.Background(), &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s still %s", id, r.Status.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
