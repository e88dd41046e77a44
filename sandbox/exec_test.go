package sandbox

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/internal/syncbuf"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

func TestExecSharesTheContainersWorld(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("pod")
	cfg := ctrConfig("main", img, "sleep-forever")
	cfg.WorkingDir = "/work"
	c := e.start(sb, cfg)
	ctx := context.Background()

	code, out, _, err := e.m.ExecSync(ctx, c.ID, []string{"probe", "write", "/work/note.txt", "written by exec"}, 10, 1<<20)
	if err != nil || code != 0 {
		t.Fatalf("exec write: %d %v", code, err)
	}
	if !strings.Contains(string(out), `/work/note.txt holds "written by exec"`) {
		t.Errorf("exec write said %q", out)
	}
	// The file is in the container's root: the next exec sees it, with the
	// container's env and working directory.
	code, out, _, err = e.m.ExecSync(ctx, c.ID, []string{"probe", "cat", "note.txt"}, 10, 1<<20)
	if err != nil || code != 0 || string(out) != "written by exec" {
		t.Fatalf("exec cat: %d %q %v", code, out, err)
	}
	start := time.Now()
	_, out, _, _ = e.m.ExecSync(ctx, c.ID, []string{"probe", "show"}, 10, 1<<20)
	quick := time.Since(start) // a whole exec on this machine now: the baseline below
	for _, want := range []string{`args: ["probe" "show"]`, "env: SECRET=s3", "cwd: /work"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("exec output lacks %q:\n%s", want, out)
		}
	}
	code, _, errOut, err := e.m.ExecSync(ctx, c.ID, []string{"probe", "exit", "4"}, 10, 1<<20)
	if err != nil || code != 4 || !strings.Contains(string(errOut), "exiting with 4") {
		t.Fatalf("exec exit 4: %d %q %v", code, errOut, err)
	}
	// Output is bounded.
	_, out, _, _ = e.m.ExecSync(ctx, c.ID, []string{"probe", "show"}, 10, 16)
	if len(out) != 16 {
		t.Errorf("bounded output is %d bytes", len(out))
	}
	// A timeout stops the command and says so: not before it, and not
	// much after it, much being measured against a quick exec of this run.
	const timeout = time.Second
	start = time.Now()
	_, _, _, err = e.m.ExecSync(ctx, c.ID, []string{"probe", "sleep-forever"}, int64(timeout/time.Second), 1<<20)
	took := time.Since(start)
	t.Logf("a %v exec timeout ended the exec after %v (a quick exec took %v)", timeout, took, quick)
	if !errors.Is(err, context.DeadlineExceeded) || took < timeout || took > 2*timeout+10*quick {
		t.Fatalf("exec past its %v timeout: %v after %v (a quick exec took %v)", timeout, err, took, quick)
	}
	// The container itself runs on.
	if got, _ := e.m.Container(c.ID); got.State != ContainerRunning {
		t.Fatalf("container is %s after execs", got.State)
	}
	if err := e.m.StopContainer(c.ID, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := e.m.ExecSync(ctx, c.ID, []string{"probe"}, 1, 10); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("exec in an exited container: %v", err)
	}
}

func TestExecWithStdinAndTTY(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	c := e.start(e.sandbox("pod"), ctrConfig("main", img, "sleep-forever"))
	out := &syncbuf.Buffer{}
	code, err := e.m.Exec(context.Background(), c.ID, ExecOptions{Cmd: []string{"x", "echo-stdin"}, Stdin: strings.NewReader("piped in\n"), Stdout: out, Stderr: &syncbuf.Buffer{}})
	if err != nil || code != 0 || out.String() != "piped in\n" || !out.Closed() {
		t.Fatalf("exec with stdin: %d %v %q closed=%v", code, err, out.String(), out.Closed())
	}
	tty := &syncbuf.Buffer{}
	code, err = e.m.Exec(context.Background(), c.ID, ExecOptions{Cmd: []string{"x"}, Stdout: tty, TTY: true})
	if err != nil || code != 0 || !strings.Contains(tty.String(), "Hello from WebAssembly!") || !strings.Contains(tty.String(), "this line went to stderr") {
		t.Fatalf("exec with a TTY: %d %v %q", code, err, tty.String())
	}
}
