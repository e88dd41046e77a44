package cri_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestExecSyncForProbes(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	_, id := c.runContainer(t, "probe", nil, "sleep-forever")

	r, err := c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"probe", "exit", "0"}, Timeout: 5})
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("healthy probe: %v %v", r, err)
	}
	r, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"probe", "exit", "1"}, Timeout: 5})
	if err != nil || r.ExitCode != 1 || !strings.Contains(string(r.Stderr), "exiting with 1") {
		t.Fatalf("failing probe: %v %v", r, err)
	}
	start := time.Now()
	r, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"probe", "hello"}})
	quick := time.Since(start) // a whole probe on this machine now: the baseline below
	if err != nil || !strings.Contains(string(r.Stdout), `args: ["probe" "hello"]`) {
		t.Fatalf("probe output: %v %v", r, err)
	}
	// A probe past its timeout ends at it: not before, and not much after,
	// much being measured against a quick probe of this run.
	const timeout = time.Second
	start = time.Now()
	_, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"probe", "sleep-forever"}, Timeout: int64(timeout / time.Second)})
	took := time.Since(start)
	wantCode(t, "probe past its timeout", err, codes.DeadlineExceeded)
	t.Logf("a %v probe took %v (a quick probe %v)", timeout, took, quick)
	if took < timeout || took > 2*timeout+10*quick {
		t.Errorf("a %v probe took %v (a quick probe %v)", timeout, took, quick)
	}
	_, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id})
	wantCode(t, "empty command", err, codes.InvalidArgument)
	ex, err := c.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: id, Cmd: []string{"x"}, Stdout: true})
	if err != nil || !strings.HasPrefix(ex.Url, "http://127.0.0.1:") {
		t.Fatalf("Exec URL: %v %v", ex, err)
	}
	_, err = c.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: "deadbeef", Stdout: true})
	wantCode(t, "attach to unknown", err, codes.NotFound)
}
