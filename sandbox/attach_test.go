package sandbox

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/internal/syncbuf"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

func TestAttach(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("pod")
	cfg := ctrConfig("echo", img, "echo-stdin")
	cfg.Stdin, cfg.StdinOnce = true, true
	c := e.start(sb, cfg)

	out, errs := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- e.m.Attach(context.Background(), c.ID, strings.NewReader("hello through attach\n"), out, errs, false)
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("attach did not end when the container did")
	}
	if out.String() != "hello through attach\n" || !out.Closed() {
		t.Fatalf("attached stdout = %q (closed %v)", out.String(), out.Closed())
	}
	got := e.waitExited(c.ID, 5*time.Second)
	if got.ExitCode != 0 {
		t.Fatalf("stdin_once container exit: %+v", got)
	}
	if log := readFile(t, got.LogPath); !strings.Contains(log, "stdout F hello through attach") {
		t.Errorf("attached output missing from the log:\n%s", log)
	}

	// A container without stdin refuses attached input; output still flows.
	ticker := e.start(sb, ctrConfig("ticker", img, "sleep-forever"))
	if err := e.m.Attach(context.Background(), ticker.ID, strings.NewReader("x"), &syncbuf.Buffer{}, nil, false); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("stdin to a container without stdin: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 350*time.Millisecond)
	defer cancel()
	out = &syncbuf.Buffer{}
	if err := e.m.Attach(ctx, ticker.ID, nil, out, &syncbuf.Buffer{}, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "tick ") {
		t.Fatalf("attached output of a ticking container: %q", out.String())
	}
}
