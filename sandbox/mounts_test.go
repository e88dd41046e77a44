package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

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
	sb, err := e.m.RunSandbox(context.Background(), cfg, "")
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
	b, err := imagebuild.BuildCompat(testmodule.Hello(t), imagebuild.CompatOptions{ModulePath: "/app/hello.wasm", Files: []imagebuild.TarEntry{
		{Name: "/etc/app.conf", Data: []byte("setting=1\n")},
		{Name: "/data/d.txt", Data: []byte("data\n")},
		{Name: "/data/link", Link: "d.txt"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := imagebuild.Push(ctx, ref, b, image.RegistryOptions{}, nil); err != nil {
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
	// The root shows the image's files, the module's included, without
	// copying them: the image's tree is the overlay's lower layer.
	if code, out := run(first, "cat", "/app/hello.wasm"); code != 0 || !strings.HasPrefix(out, "\x00asm") {
		t.Errorf("the module file is not in the root: %d", code)
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

// An image volume holds its image's files as a container root does:
// removing the image leaves them to the containers that show them, also
// over a restart of the daemon, until the last of those is removed; a
// create that fails holds nothing.
func TestImageVolumeOutlivesItsImage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	runner := e.image("hello", testmodule.Hello(t))
	data := e.hostileImage("data", imagebuild.TarEntry{Name: "/etc/motd", Data: []byte("from the volume\n")})
	got, err := e.images.Get(data)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := e.images.Filesystem(ctx, got)
	if err != nil {
		t.Fatal(err)
	}
	sb := e.sandbox("volumes")
	volume := []*runtimeapi.Mount{{ContainerPath: "/data", Readonly: true, Image: &runtimeapi.ImageSpec{Image: data}}}
	running := ctrConfig("running", runner, "sleep-forever")
	running.Mounts = volume
	r := e.start(sb, running)
	created := ctrConfig("created", runner)
	created.Mounts = volume
	c, err := e.m.CreateContainer(ctx, sb.ID, created)
	if err != nil {
		t.Fatal(err)
	}
	// A create that fails after the volume is resolved holds nothing.
	failing := ctrConfig("running", runner) // the name is taken
	failing.Mounts = volume
	if _, err := e.m.CreateContainer(ctx, sb.ID, failing); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("a second container under one name: %v", err)
	}

	if err := e.images.Remove(ctx, data); err != nil {
		t.Fatal(err)
	}
	if code, out, _, _ := e.m.ExecSync(ctx, r.ID, []string{"x", "cat", "/data/etc/motd"}, 10, 1<<10); code != 0 || string(out) != "from the volume\n" {
		t.Fatalf("the volume after its image was removed: %d %q", code, out)
	}
	// The daemon restarts: the created container holds the files again
	// before the unheld ones are collected.
	e.m.Shutdown()
	if e.images, err = image.NewService(e.db, filepath.Join(e.dir, "content"), image.Options{}); err != nil {
		t.Fatal(err)
	}
	e.m = e.manager()
	if n, err := e.images.CollectFilesystems(ctx); n != 0 || err != nil {
		t.Fatalf("collected %d trees (%v) while a created container holds one", n, err)
	}
	if err := e.m.RemoveContainer(r.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(tree, "etc", "motd")); err != nil {
		t.Fatalf("the files went while a container still shows them: %v", err)
	}
	if err := e.m.RemoveContainer(c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tree); !os.IsNotExist(err) {
		t.Errorf("the removed image's files outlived its last container: %v", err)
	}
}
