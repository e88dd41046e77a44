package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/internal/crilog/crilogtest"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestContainerRunsToCompletion(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("pod-a")
	c := e.container(sb, "app", img, "first", "second")
	if c.State != ContainerCreated {
		t.Fatalf("state after create = %s", c.State)
	}
	if err := e.m.StartContainer(context.Background(), c.ID); err != nil {
		t.Fatal(err)
	}
	c = e.waitExited(c.ID, 10*time.Second)
	if c.ExitCode != 0 || c.Reason != ReasonCompleted {
		t.Fatalf("exit = %d %s %s", c.ExitCode, c.Reason, c.Message)
	}
	if c.StartedAt.IsZero() || c.FinishedAt.Before(c.StartedAt) || c.StartedAt.Before(c.CreatedAt) {
		t.Errorf("times: created %v started %v finished %v", c.CreatedAt, c.StartedAt, c.FinishedAt)
	}
	if c.LogPath != filepath.Join(e.dir, "pods", "pod-a", "app.log") {
		t.Errorf("log path = %s", c.LogPath)
	}
	out := readFile(t, c.LogPath)
	for _, want := range []string{
		` stdout F args: ["/hello.wasm" "first" "second"]`,
		" stdout F env: FROM_IMAGE=yes",
		" stdout F env: OVERRIDE=container",
		" stdout F cwd: /",
		" stderr F this line went to stderr",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "OVERRIDE=image") {
		t.Errorf("container env did not override the image's:\n%s", out)
	}
	if err := e.m.StartContainer(context.Background(), c.ID); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("second start: %v", err)
	}
}

func TestExitCodesAndTraps(t *testing.T) {
	e := newEnv(t)
	hello := e.image("hello", testmodule.Hello(t))
	trap := e.image("trap", testmodule.Wat(t, testmodule.Trap))
	sb := e.sandbox("pod")
	for _, tc := range []struct {
		img    string
		args   []string
		code   int32
		reason string
		msg    string
	}{
		{hello, []string{"exit", "3"}, 3, ReasonError, ""},
		{trap, nil, 1, ReasonError, "unreachable"},
	} {
		c := e.container(sb, "c-"+strings.Join(tc.args, "-")+filepath.Base(tc.img), tc.img, tc.args...)
		if err := e.m.StartContainer(context.Background(), c.ID); err != nil {
			t.Fatal(err)
		}
		c = e.waitExited(c.ID, 10*time.Second)
		if c.ExitCode != tc.code || c.Reason != tc.reason || !strings.Contains(c.Message, tc.msg) {
			t.Errorf("%v: exit %d reason %q message %q", tc.args, c.ExitCode, c.Reason, c.Message)
		}
	}
}

func TestStopIsPromptAndIsolated(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	a, b := e.sandbox("pod-a"), e.sandbox("pod-b")
	ca := e.container(a, "sleeper", img, "sleep-forever")
	cb := e.container(b, "sleeper", img, "sleep-forever")
	spinner := e.container(a, "spinner", img, "spin")
	for _, c := range []Container{ca, cb, spinner} {
		if err := e.m.StartContainer(context.Background(), c.ID); err != nil {
			t.Fatal(err)
		}
	}
	// Each is under way: the sleepers in their sleep, the spinner in its loop.
	crilogtest.WaitFor(t, ca.LogPath, "stdout", "tick 1")
	crilogtest.WaitFor(t, cb.LogPath, "stdout", "tick 1")
	crilogtest.WaitFor(t, spinner.LogPath, "stdout", "spinning")
	// No graceful phase: Stop interrupts at once and does not wait out the
	// timeout. The bound is that timeout, not a wall-clock figure, so a busy
	// machine cannot fail it; how fast a stop is, the benchmarks say
	// (wasm's BenchmarkStopSpinning).
	const timeout = 30 * time.Second
	for _, c := range []Container{ca, spinner} {
		start := time.Now()
		if err := e.m.StopContainer(c.ID, timeout); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		t.Logf("stop of %s took %v", c.Config.Metadata.Name, d)
		if d >= timeout/2 {
			t.Errorf("stop of %s took %v of its %v timeout: not at once", c.Config.Metadata.Name, d, timeout)
		}
		got, _ := e.m.Container(c.ID)
		if got.State != ContainerExited || got.ExitCode != 137 {
			t.Errorf("%s after stop: %s exit %d", c.Config.Metadata.Name, got.State, got.ExitCode)
		}
	}
	if got, _ := e.m.Container(cb.ID); got.State != ContainerRunning {
		t.Fatalf("the other pod's container is %s", got.State)
	}
	// Stopping the sandbox stops what runs in it; removing it removes all.
	if err := e.m.StopSandbox(context.Background(), b.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.m.Container(cb.ID); got.State != ContainerExited {
		t.Fatalf("container of stopped sandbox is %s", got.State)
	}
	if sb, _ := e.m.Sandbox(b.ID); sb.State != SandboxNotReady {
		t.Fatalf("stopped sandbox is %s", sb.State)
	}
	if _, err := e.m.CreateContainer(context.Background(), b.ID, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "late"}, Image: &runtimeapi.ImageSpec{Image: img},
	}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("create in a stopped sandbox: %v", err)
	}
	if err := e.m.RemoveSandbox(context.Background(), a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Container(ca.ID); !errdefs.IsNotFound(err) {
		t.Fatalf("container outlived its removed sandbox: %v", err)
	}
	if _, err := os.Stat(e.m.rootfs(ca.ID)); !os.IsNotExist(err) {
		t.Fatalf("container root left behind: %v", err)
	}
	if err := e.m.RemoveSandbox(context.Background(), a.ID); err != nil {
		t.Fatalf("second remove: %v", err)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("pod")
	running := e.container(sb, "running", img, "sleep-forever")
	created := e.container(sb, "created", img)
	done := e.container(sb, "done", img, "exit", "7")
	for _, c := range []Container{running, done} {
		if err := e.m.StartContainer(context.Background(), c.ID); err != nil {
			t.Fatal(err)
		}
	}
	e.waitExited(done.ID, 10*time.Second)

	// A new manager over the same database is the daemon after a crash.
	m2 := e.manager()
	if got, err := m2.Sandbox(sb.ID); err != nil || got.State != SandboxReady || got.Config.Labels["app"] != "pod" {
		t.Fatalf("sandbox after restart: %+v, %v", got, err)
	}
	checks := map[string]func(Container) bool{
		running.ID: func(c Container) bool {
			return c.State == ContainerExited && c.Reason == ReasonDaemonRestarted && c.ExitCode == 255
		},
		created.ID: func(c Container) bool { return c.State == ContainerCreated },
		done.ID:    func(c Container) bool { return c.State == ContainerExited && c.ExitCode == 7 },
	}
	for id, ok := range checks {
		c, err := m2.Container(id)
		if err != nil || !ok(c) {
			t.Errorf("container %s after restart: %+v, %v", id, c, err)
		}
	}
	// The created container can still start under the new manager.
	if err := m2.StartContainer(context.Background(), created.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.RunSandbox(context.Background(), podConfig("pod", e.dir), ""); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("sandbox name not reserved after restart: %v", err)
	}
	m2.Shutdown()
}

func TestRefusals(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	bad := e.image("bad", []byte("\x00asm\x01\x00\x00\x00\x01\x02\x03"))
	noStart := e.image("nostart", testmodule.Wat(t, testmodule.NoStart))
	sb := e.sandbox("pod")
	ctx := context.Background()

	if _, err := e.m.RunSandbox(context.Background(), podConfig("pod", e.dir), ""); !errdefs.IsAlreadyExists(err) {
		t.Errorf("duplicate sandbox: %v", err)
	}
	if _, err := e.m.RunSandbox(context.Background(), podConfig("other", e.dir), "runc"); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "runc") {
		t.Errorf("unknown handler: %v", err)
	}
	if got, err := e.m.RunSandbox(context.Background(), podConfig("debug", e.dir), "wasmtime-debug"); err != nil || got.RuntimeHandler != "wasmtime-debug" {
		t.Errorf("second handler: %+v, %v", got, err)
	}
	if _, err := e.m.RunSandbox(context.Background(), &runtimeapi.PodSandboxConfig{}, ""); !errdefs.IsInvalidArgument(err) {
		t.Errorf("no metadata: %v", err)
	}
	if _, err := e.m.CreateContainer(ctx, "nope", &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "x"}, Image: &runtimeapi.ImageSpec{Image: img}}); !errdefs.IsNotFound(err) {
		t.Errorf("create in unknown sandbox: %v", err)
	}
	if _, err := e.m.CreateContainer(ctx, sb.ID, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "x"}, Image: &runtimeapi.ImageSpec{Image: "absent:1"}}); !errdefs.IsNotFound(err) {
		t.Errorf("create from absent image: %v", err)
	}
	if _, err := e.m.CreateContainer(ctx, sb.ID, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "x"}, Image: &runtimeapi.ImageSpec{Image: bad}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("create from malformed module: %v", err)
	}
	c := e.container(sb, "nostart", noStart)
	if err := e.m.StartContainer(ctx, c.ID); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "_start") {
		t.Errorf("start of a module without _start: %v", err)
	}
	if got, _ := e.m.Container(c.ID); got.State != ContainerExited || got.Reason != ReasonStartError || got.ExitCode != 128 {
		t.Errorf("after failed start: %+v", got)
	}
	e.container(sb, "dup", img)
	if _, err := e.m.CreateContainer(ctx, sb.ID, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "dup"}, Image: &runtimeapi.ImageSpec{Image: img}}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("duplicate container name: %v", err)
	}
	for name, err := range map[string]error{
		"start":  e.m.StartContainer(ctx, "nope"),
		"status": func() error { _, err := e.m.Container("nope"); return err }(),
	} {
		if !errdefs.IsNotFound(err) {
			t.Errorf("%s of unknown ID: %v", name, err)
		}
	}
	// CRI: stop and remove are idempotent.
	for name, err := range map[string]error{
		"remove container": e.m.RemoveContainer("nope"),
		"stop container":   e.m.StopContainer("nope", 0),
		"stop sandbox":     e.m.StopSandbox(context.Background(), "nope"),
	} {
		if err != nil {
			t.Errorf("%s of an unknown ID: %v", name, err)
		}
	}
	// A unique prefix finds the sandbox, as crictl users type it.
	if got, err := e.m.Sandbox(sb.ID[:12]); err != nil || got.ID != sb.ID {
		t.Errorf("prefix lookup: %v", err)
	}
}

func TestCommandLine(t *testing.T) {
	artifact := &image.Image{Format: image.FormatArtifact, Module: image.Module{Name: "app"}}
	compat := &image.Image{Entrypoint: []string{"/app.wasm"}, Cmd: []string{"serve"}, Module: image.Module{Name: "/app.wasm"}}
	cmdOnly := &image.Image{Cmd: []string{"/app.wasm", "x"}, Module: image.Module{Name: "/app.wasm"}}
	for _, tc := range []struct {
		img        *image.Image
		cmd, args  []string
		wantCmdArg string
	}{
		{artifact, nil, nil, "app"},
		{artifact, nil, []string{"a", "b"}, "app a b"},
		{artifact, []string{"prog", "-v"}, []string{"a"}, "prog -v a"},
		{compat, nil, nil, "/app.wasm serve"},
		{compat, nil, []string{"debug"}, "/app.wasm debug"},
		{compat, []string{"/app.wasm"}, nil, "/app.wasm"},
		{cmdOnly, nil, nil, "/app.wasm x"},
	} {
		got := strings.Join(commandLine(tc.img, &runtimeapi.ContainerConfig{Command: tc.cmd, Args: tc.args, Image: &runtimeapi.ImageSpec{Image: "sha256:0123"}}), " ")
		if got != tc.wantCmdArg {
			t.Errorf("image %v/%v command %v args %v: argv %q, want %q", tc.img.Entrypoint, tc.img.Cmd, tc.cmd, tc.args, got, tc.wantCmdArg)
		}
	}
	// An artifact's argv[0] is the name the container knows its image by.
	for _, tc := range []struct {
		image, user string
		want        string
	}{
		{"registry.example/team/server:v1", "", "server"},
		{"sha256:0123", "registry.example/team/web:v2", "web"},
		{"sha256:0123", "", "app"},
	} {
		got := commandLine(artifact, &runtimeapi.ContainerConfig{Image: &runtimeapi.ImageSpec{Image: tc.image, UserSpecifiedImage: tc.user}})
		if got[0] != tc.want {
			t.Errorf("image %q user %q: argv[0] %q, want %q", tc.image, tc.user, got[0], tc.want)
		}
	}
}
