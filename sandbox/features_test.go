package sandbox

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

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

// waitLogSays waits for a stdout line in a container's log.
func waitLogSays(t *testing.T, path, text string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), " stdout F "+text+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %s never said %q:\n%s", path, text, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type bufCloser struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	closed bool
}

func (b *bufCloser) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}
func (b *bufCloser) Close() error { b.mu.Lock(); b.closed = true; b.mu.Unlock(); return nil }
func (b *bufCloser) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

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
	_, out, _, _ = e.m.ExecSync(ctx, c.ID, []string{"probe", "show"}, 10, 1<<20)
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
	// A timeout stops the command and says so.
	start := time.Now()
	_, _, _, err = e.m.ExecSync(ctx, c.ID, []string{"probe", "sleep-forever"}, 1, 1<<20)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("exec past its timeout: %v after %v", err, time.Since(start))
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
	out := &bufCloser{}
	code, err := e.m.Exec(context.Background(), c.ID, ExecOptions{Cmd: []string{"x", "echo-stdin"}, Stdin: strings.NewReader("piped in\n"), Stdout: out, Stderr: &bufCloser{}})
	if err != nil || code != 0 || out.String() != "piped in\n" || !out.closed {
		t.Fatalf("exec with stdin: %d %v %q closed=%v", code, err, out.String(), out.closed)
	}
	tty := &bufCloser{}
	code, err = e.m.Exec(context.Background(), c.ID, ExecOptions{Cmd: []string{"x"}, Stdout: tty, TTY: true})
	if err != nil || code != 0 || !strings.Contains(tty.String(), "Hello from WebAssembly!") || !strings.Contains(tty.String(), "this line went to stderr") {
		t.Fatalf("exec with a TTY: %d %v %q", code, err, tty.String())
	}
}

func TestAttach(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("pod")
	cfg := ctrConfig("echo", img, "echo-stdin")
	cfg.Stdin, cfg.StdinOnce = true, true
	c := e.start(sb, cfg)

	out, errs := &bufCloser{}, &bufCloser{}
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
	if out.String() != "hello through attach\n" || !out.closed {
		t.Fatalf("attached stdout = %q (closed %v)", out.String(), out.closed)
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
	if err := e.m.Attach(context.Background(), ticker.ID, strings.NewReader("x"), &bufCloser{}, nil, false); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("stdin to a container without stdin: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 350*time.Millisecond)
	defer cancel()
	out = &bufCloser{}
	if err := e.m.Attach(ctx, ticker.ID, nil, out, &bufCloser{}, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "tick ") {
		t.Fatalf("attached output of a ticking container: %q", out.String())
	}
}

func TestMounts(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("pod")
	host := t.TempDir()
	for _, d := range []string{"config", "data"} {
		os.MkdirAll(filepath.Join(host, d), 0o755)
	}
	os.WriteFile(filepath.Join(host, "config", "app.conf"), []byte("from a configMap"), 0o644)
	os.WriteFile(filepath.Join(host, "single.txt"), []byte("one file, read-only"), 0o644)
	os.WriteFile(filepath.Join(host, "outside.txt"), []byte("must stay unseen"), 0o644)
	termination := filepath.Join(host, "termination-log")
	os.WriteFile(termination, nil, 0o644)

	cfg := ctrConfig("mounts", img, "sleep-forever")
	cfg.Mounts = []*runtimeapi.Mount{
		{ContainerPath: "/etc/config", HostPath: filepath.Join(host, "config"), Readonly: true},
		{ContainerPath: "/data", HostPath: filepath.Join(host, "data")},
		{ContainerPath: "/etc/single.txt", HostPath: filepath.Join(host, "single.txt"), Readonly: true},
		{ContainerPath: "/dev/termination-log", HostPath: termination},
	}
	c := e.start(sb, cfg)
	ctx := context.Background()
	exec := func(args ...string) (int32, string) {
		t.Helper()
		code, out, errOut, err := e.m.ExecSync(ctx, c.ID, append([]string{"x"}, args...), 10, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		return code, string(out) + string(errOut)
	}
	if code, out := exec("cat", "/etc/config/app.conf", "/etc/single.txt"); code != 0 || out != "from a configMapone file, read-only" {
		t.Errorf("reading mounts: %d %q", code, out)
	}
	if code, out := exec("write", "/etc/config/new", "x"); code == 0 {
		t.Errorf("wrote into a read-only mount: %q", out)
	}
	if code, _ := exec("write", "/data/out.txt", "to the host"); code != 0 {
		t.Errorf("could not write a writable mount")
	}
	if b, _ := os.ReadFile(filepath.Join(host, "data", "out.txt")); string(b) != "to the host" {
		t.Errorf("host side of the data mount holds %q", b)
	}
	exec("write", "/etc/single.txt", "changed")
	if b, _ := os.ReadFile(filepath.Join(host, "single.txt")); string(b) != "one file, read-only" {
		t.Errorf("a read-only file mount's host file changed to %q", b)
	}
	for _, escape := range []string{"/../outside.txt", "/data/../../outside.txt", filepath.Join(host, "outside.txt")} {
		if code, out := exec("cat", escape); code == 0 || strings.Contains(out, "must stay unseen") {
			t.Errorf("read %s from inside: %q", escape, out)
		}
	}
	if code, _ := exec("write", "/dev/termination-log", "goodbye from wasm"); code != 0 {
		t.Fatal("could not write the termination log")
	}
	e.m.StopContainer(c.ID, 0)
	if b, _ := os.ReadFile(termination); string(b) != "goodbye from wasm" {
		t.Errorf("termination message on the host: %q", b)
	}

	bad := ctrConfig("bad", img)
	bad.Mounts = []*runtimeapi.Mount{{ContainerPath: "relative", HostPath: host}}
	if _, err := e.m.CreateContainer(ctx, sb.ID, bad); !errdefs.IsInvalidArgument(err) {
		t.Errorf("relative container path: %v", err)
	}
	bad.Mounts = []*runtimeapi.Mount{{ContainerPath: "/x", HostPath: filepath.Join(host, "absent")}}
	if _, err := e.m.CreateContainer(ctx, sb.ID, bad); !errdefs.IsInvalidArgument(err) {
		t.Errorf("absent host path: %v", err)
	}
}

func TestStatsEventsResourcesAndLogs(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("pod")
	events, cancel := e.m.Subscribe()
	defer cancel()

	cfg := ctrConfig("holder", img, "alloc", "24")
	cfg.Linux = &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 256 << 20}}
	holder := e.start(sb, cfg)
	waitLogSays(t, holder.LogPath, "holding 24 MiB")
	time.Sleep(200 * time.Millisecond)
	st, err := e.m.ContainerStats(holder.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryBytes < 24<<20 || st.CPU <= 0 || st.WritableInodes == 0 {
		t.Errorf("stats = %+v", st)
	}

	// Lowering the memory limit below what it holds: the next allocation
	// fails and the container is OOMKilled.
	grower := e.start(sb, ctrConfig("grower", img, "alloc-slowly"))
	waitLogSays(t, grower.LogPath, "holding 20 MiB")
	if err := e.m.UpdateResources(grower.ID, &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 40 << 20}); err != nil {
		t.Fatal(err)
	}
	got := e.waitExited(grower.ID, 20*time.Second)
	if got.Reason != ReasonOOMKilled || got.ExitCode != 137 || got.Resources.MemoryLimitBytes != 40<<20 {
		t.Errorf("after the limit was lowered: reason %q exit %d resources %+v", got.Reason, got.ExitCode, got.Resources)
	}
	if err := e.m.UpdateResources(grower.ID, &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 1}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("update of an exited container: %v", err)
	}
	if err := e.m.UpdateResources(holder.ID, &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: -5}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative limit: %v", err)
	}

	// Rotation: kubelet renames the file, then asks for a reopen.
	ticker := e.start(sb, ctrConfig("ticker", img, "sleep-forever"))
	waitLogSays(t, ticker.LogPath, "tick 2")
	rotated := ticker.LogPath + ".1"
	if err := os.Rename(ticker.LogPath, rotated); err != nil {
		t.Fatal(err)
	}
	if err := e.m.ReopenLog(ticker.ID); err != nil {
		t.Fatal(err)
	}
	waitLogSays(t, ticker.LogPath, "tick 6")
	e.m.StopContainer(ticker.ID, 0)
	old, cur := readFile(t, rotated), readFile(t, ticker.LogPath)
	for i := 0; i <= 6; i++ {
		line := " stdout F tick " + strconv.Itoa(i) + "\n"
		if strings.Count(old+cur, line) != 1 {
			t.Errorf("tick %d appears %d times across the rotation", i, strings.Count(old+cur, line))
		}
	}
	if err := e.m.ReopenLog(ticker.ID); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("reopen of an exited container's log: %v", err)
	}
	e.m.RemoveContainer(ticker.ID)

	want := map[string][]EventType{
		holder.ID: {ContainerCreatedEvent, ContainerStartedEvent},
		grower.ID: {ContainerCreatedEvent, ContainerStartedEvent, ContainerStoppedEvent},
		ticker.ID: {ContainerCreatedEvent, ContainerStartedEvent, ContainerStoppedEvent, ContainerDeletedEvent},
	}
	got2 := map[string][]EventType{}
	for len(events) > 0 {
		ev := <-events
		got2[ev.ContainerID] = append(got2[ev.ContainerID], ev.Type)
	}
	for id, w := range want {
		if fmtTypes(got2[id]) != fmtTypes(w) {
			t.Errorf("events of %s: %v, want %v", id[:12], got2[id], w)
		}
	}
}

func fmtTypes(ts []EventType) string {
	var s []string
	for _, t := range ts {
		s = append(s, strconv.Itoa(int(t)))
	}
	return strings.Join(s, " ")
}

// Port-forward would reach the node's loopback (a pod has no network of
// its own yet): a node-local service on the very port the pod declares
// must get no connection, and the call says why it is refused.
func TestPortForwardNeverReachesTheNode(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c
		}
	}()
	port := int32(l.Addr().(*net.TCPAddr).Port)
	cfg := podConfig("web", e.dir)
	cfg.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: port}}
	sb, err := e.m.RunSandbox(cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []int32{port, port + 1} {
		client, server := net.Pipe()
		err := e.m.PortForward(context.Background(), sb.ID, p, server)
		if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "no network of their own") {
			t.Fatalf("port-forward to %d: %v", p, err)
		}
		// The stream is closed, not left hanging.
		if _, err := client.Read(make([]byte, 1)); err == nil {
			t.Fatal("the stream stayed open")
		}
	}
	// Dial the service ourselves: it answers, and the one connection it
	// accepted is ours, not the pod's.
	mine, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	c := <-accepted
	defer c.Close()
	if c.RemoteAddr().String() != mine.LocalAddr().String() {
		t.Fatalf("the node service's first connection came from %s, not the test", c.RemoteAddr())
	}
}

// The container root holds what containerd's would: hostname, DNS config,
// device nodes; a read-only root stays read-only but for writable file
// mounts; recursive read-only mounts are checked; a non-recursive one leaves
// writable mounts below it writable.
func TestContainerRootAndReadOnlyMounts(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	cfg := podConfig("rooted", e.dir)
	cfg.Hostname = "wasm-host"
	cfg.DnsConfig = &runtimeapi.DNSConfig{Servers: []string{"10.0.0.10"}, Searches: []string{"svc.local"}, Options: []string{"ndots:5"}}
	sb, err := e.m.RunSandbox(cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	host := t.TempDir()
	ro := filepath.Join(host, "ro")
	sub := filepath.Join(ro, "tmpfs")
	os.MkdirAll(sub, 0o755)
	if err := syscall.Mount("none", sub, "tmpfs", 0, ""); err != nil {
		t.Fatalf("mount a tmpfs for the test: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(sub, syscall.MNT_DETACH) })
	termination := filepath.Join(host, "termination-log")
	os.WriteFile(termination, nil, 0o644)

	ctr := ctrConfig("root", img, "sleep-forever")
	ctr.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{ReadonlyRootfs: true}}
	ctr.Mounts = []*runtimeapi.Mount{
		{ContainerPath: "/mnt", HostPath: ro, Readonly: true},
		{ContainerPath: "/dev/termination-log", HostPath: termination},
	}
	c := e.start(sb, ctr)
	exec := func(args ...string) (int32, string) {
		t.Helper()
		code, out, errOut, err := e.m.ExecSync(context.Background(), c.ID, append([]string{"x"}, args...), 10, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		return code, string(out) + string(errOut)
	}
	for file, want := range map[string]string{
		"/etc/hostname":    "wasm-host\n",
		"/etc/resolv.conf": "nameserver 10.0.0.10\nsearch svc.local\noptions ndots:5\n",
	} {
		if code, out := exec("cat", file); code != 0 || out != want {
			t.Errorf("%s: %d %q", file, code, out)
		}
	}
	if _, out := exec("show"); !strings.Contains(out, "env: HOSTNAME=wasm-host") {
		t.Errorf("HOSTNAME not in the environment:\n%s", out)
	}
	if code, out := exec("write", "/dev/null", "discarded"); code != 0 {
		t.Errorf("writing /dev/null: %s", out)
	}
	if code, out := exec("write", "/new-file", "x"); code == 0 {
		t.Errorf("wrote into a read-only root: %s", out)
	}
	if code, out := exec("write", "/dev/termination-log", "bye"); code != 0 {
		t.Errorf("a writable file mount under a read-only root: %s", out)
	}
	if code, out := exec("write", "/mnt/tmpfs/file", "x"); code != 0 {
		t.Errorf("a writable mount below a non-recursive read-only mount: %s", out)
	}
	if code, out := exec("write", "/mnt/file", "x"); code == 0 {
		t.Errorf("wrote into the read-only mount itself: %s", out)
	}

	// Recursive read-only: the mount below is read-only too.
	rro := ctrConfig("rro", img, "sleep-forever")
	rro.Mounts = []*runtimeapi.Mount{{ContainerPath: "/mnt", HostPath: ro, Readonly: true, RecursiveReadOnly: true}}
	c2 := e.start(sb, rro)
	if code, _, _, _ := e.m.ExecSync(context.Background(), c2.ID, []string{"x", "write", "/mnt/tmpfs/file2", "x"}, 10, 1<<20); code == 0 {
		t.Error("wrote below a recursive read-only mount")
	}
	for _, bad := range []*runtimeapi.Mount{
		{ContainerPath: "/mnt", HostPath: ro, RecursiveReadOnly: true},
		{ContainerPath: "/mnt", HostPath: ro, Readonly: true, RecursiveReadOnly: true, Propagation: runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER},
	} {
		cfg := ctrConfig("bad-rro", img)
		cfg.Mounts = []*runtimeapi.Mount{bad}
		if _, err := e.m.CreateContainer(context.Background(), sb.ID, cfg); !errdefs.IsInvalidArgument(err) {
			t.Errorf("recursive read-only mount %+v: %v", bad, err)
		}
	}
}

// An image volume shows the image's files, read-only, whole or at a sub
// path; a writable one, or a sub path not in the image, is refused.
func TestImageVolume(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t)) // a compat image: /hello.wasm
	sb := e.sandbox("volumes")
	cfg := ctrConfig("reader", img, "sleep-forever")
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/data", Readonly: true, Image: &runtimeapi.ImageSpec{Image: img}}}
	c := e.start(sb, cfg)
	ctx := context.Background()
	if code, out, _, _ := e.m.ExecSync(ctx, c.ID, []string{"x", "cat", "/data/hello.wasm"}, 10, 8); code != 0 || string(out) != "\x00asm\x01\x00\x00\x00" {
		t.Errorf("reading the image volume: %d %q", code, out)
	}
	if code, _, _, _ := e.m.ExecSync(ctx, c.ID, []string{"x", "write", "/data/new", "x"}, 10, 1<<10); code == 0 {
		t.Error("wrote into an image volume")
	}
	got, _ := e.m.Container(c.ID)
	pulled, _ := e.images.Get(img)
	if m := got.Config.GetMounts()[0]; m.GetImage().GetImageRef() != pulled.ID {
		t.Errorf("mount reports image %q, want %q", m.GetImage().GetImageRef(), pulled.ID)
	}
	for name, mnt := range map[string]*runtimeapi.Mount{
		"writable":        {ContainerPath: "/data", Image: &runtimeapi.ImageSpec{Image: img}},
		"missing subpath": {ContainerPath: "/data", Readonly: true, Image: &runtimeapi.ImageSpec{Image: img}, ImageSubPath: "no/such/dir"},
	} {
		cfg := ctrConfig("bad-"+strings.ReplaceAll(name, " ", "-"), img)
		cfg.Mounts = []*runtimeapi.Mount{mnt}
		if _, err := e.m.CreateContainer(ctx, sb.ID, cfg); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s image volume: %v", name, err)
		}
	}
}

// A compat image's files (all but its module) are the container's own
// copy; masked paths hide, read-only paths protect, as runc's do.
func TestImageFilesMaskedAndReadOnlyPaths(t *testing.T) {
	e := newEnv(t)
	ref := e.reg + "/test/files:1"
	b, err := image.BuildCompat(testmodule.Hello(t), image.CompatOptions{ModulePath: "/app/hello.wasm", Files: []image.TarEntry{
		{Name: "/etc/app.conf", Data: []byte("setting=1\n")},
		{Name: "/data/d.txt", Data: []byte("data\n")},
		{Name: "/data/link", Link: "d.txt"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := image.Push(ctx, ref, b, image.RegistryOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.images.Pull(ctx, ref, nil); err != nil {
		t.Fatal(err)
	}
	sb := e.sandbox("files")
	run := func(c Container, args ...string) (int32, string) {
		t.Helper()
		code, out, errOut, err := e.m.ExecSync(ctx, c.ID, append([]string{"x"}, args...), 10, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		return code, string(out) + string(errOut)
	}

	first := e.start(sb, ctrConfig("first", ref, "sleep-forever"))
	if code, out := run(first, "cat", "/etc/app.conf"); code != 0 || out != "setting=1\n" {
		t.Errorf("image file in the root: %d %q", code, out)
	}
	if code, out := run(first, "cat", "/data/link"); code != 0 || out != "data\n" {
		t.Errorf("image symlink in the root: %d %q", code, out)
	}
	if code, _ := run(first, "cat", "/app/hello.wasm"); code == 0 {
		t.Error("the module file was copied into the root")
	}
	if code, out := run(first, "write", "/etc/app.conf", "changed"); code != 0 {
		t.Fatalf("writing an image file: %s", out)
	}
	second := e.start(sb, ctrConfig("second", ref, "sleep-forever"))
	if _, out := run(second, "cat", "/etc/app.conf"); out != "setting=1\n" {
		t.Errorf("one container's write reached another's root: %q", out)
	}

	cfg := ctrConfig("restricted", ref, "sleep-forever")
	cfg.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		MaskedPaths:   []string{"/etc/app.conf", "/data", "/proc/kcore"},
		ReadonlyPaths: []string{"/etc", "/proc/sys"},
	}}
	restricted := e.start(sb, cfg)
	if code, out := run(restricted, "cat", "/etc/app.conf"); code != 0 || out != "" {
		t.Errorf("a masked file reads %d %q, want empty", code, out)
	}
	if code, out := run(restricted, "cat", "/data/d.txt"); code == 0 {
		t.Errorf("a masked directory shows its files: %q", out)
	}
	if code, _ := run(restricted, "write", "/data/new", "x"); code == 0 {
		t.Error("wrote into a masked directory")
	}
	if code, _ := run(restricted, "write", "/etc/new", "x"); code == 0 {
		t.Error("wrote into a read-only path")
	}
	if code, out := run(restricted, "write", "/new", "x"); code != 0 {
		t.Errorf("the rest of the root is writable: %s", out)
	}

	file := ctrConfig("ro-file", ref, "sleep-forever")
	file.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{ReadonlyPaths: []string{"/etc/app.conf"}}}
	c, err := e.m.CreateContainer(ctx, sb.ID, file)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.m.StartContainer(ctx, c.ID); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a read-only path that is a file: %v", err)
	}

	group := ctrConfig("group-only", ref)
	group.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{RunAsGroup: &runtimeapi.Int64Value{Value: 5}}}
	if _, err := e.m.CreateContainer(ctx, sb.ID, group); !errdefs.IsInvalidArgument(err) {
		t.Errorf("run_as_group without a user: %v", err)
	}
}
