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
	r, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"probe", "hello"}})
	if err != nil || !strings.Contains(string(r.Stdout), `args: ["probe" "hello"]`) {
		t.Fatalf("probe output: %v %v", r, err)
	}
	start := time.Now()
	_, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"probe", "sleep-forever"}, Timeout: 1})
	wantCode(t, "probe past its timeout", err, codes.DeadlineExceeded)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("a 1s probe took %v", took)
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
