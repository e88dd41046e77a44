package sandbox

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/crilog/crilogtest"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// canary is a host directory beside the daemon's, holding one secret file:
// what an escaping symlink would read or overwrite.
type canary struct {
	dir, secret string
}

const hostSecret = "host secret, readable by root only"

func newCanary(t *testing.T) canary {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "canary")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	c := canary{dir: dir, secret: filepath.Join(dir, "secret")}
	if err := os.WriteFile(c.secret, []byte(hostSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// climb is a relative symlink target that leaves any root and lands on p.
func climb(p string) string { return strings.Repeat("../", 24) + strings.TrimPrefix(p, "/") }

// untouched fails the test if anything in the canary changed.
func (c canary) untouched(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		t.Fatalf("canary: %v", err)
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("the daemon wrote into the host directory the image or module pointed at: %v", names)
	}
	fi, err := os.Lstat(c.secret)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("host secret replaced: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(c.secret); string(b) != hostSecret {
		t.Fatalf("host secret overwritten with %q", b)
	}
}

// hostileImage pushes and pulls a compat image of wasmbox (at
// /bin/wasmbox.wasm) with the given extra entries.
func (e *env) hostileImage(name string, files ...imagebuild.TarEntry) string {
	e.t.Helper()
	ref := e.reg + "/hostile/" + name + ":1"
	b, err := imagebuild.BuildCompat(testmodule.Wasmbox(e.t), imagebuild.CompatOptions{ModulePath: "/bin/wasmbox.wasm", Files: files})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx := context.Background()
	if err := imagebuild.Push(ctx, ref, b, image.RegistryOptions{}, nil); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.images.Pull(ctx, ref, nil); err != nil {
		e.t.Fatal(err)
	}
	return ref
}

// Symlinks an image brings, at every path the daemon writes or resolves
// when it makes a container root and starts the container: the daemon
// never follows one out of the root. Each case either runs (and the
// module cannot see the host file) or is refused; the canary stays as it
// was either way.
func TestImageSymlinksNeverLeadOut(t *testing.T) {
	e := newEnv(t)
	c := newCanary(t)
	host := t.TempDir()
	conf := filepath.Join(host, "app.conf")
	os.WriteFile(conf, []byte("config"), 0o644)
	termination := filepath.Join(host, "termination-log")
	os.WriteFile(termination, nil, 0o644)
	data := filepath.Join(host, "data")
	os.MkdirAll(data, 0o755)

	cases := []struct {
		name  string
		files []imagebuild.TarEntry
		cfg   func(*runtimeapi.ContainerConfig)
	}{
		{name: "etc", files: []imagebuild.TarEntry{{Name: "/etc", Link: c.dir}}},
		{name: "etc-relative", files: []imagebuild.TarEntry{{Name: "/etc", Link: climb(c.dir)}}},
		{name: "dev", files: []imagebuild.TarEntry{{Name: "/dev", Link: climb(c.dir)}}},
		{name: "hostname", files: []imagebuild.TarEntry{{Name: "/etc/hostname", Link: c.secret}}},
		{name: "resolv", files: []imagebuild.TarEntry{{Name: "/etc/resolv.conf", Link: climb(c.secret)}}},
		{name: "null", files: []imagebuild.TarEntry{{Name: "/dev/null", Link: c.secret}}},
		{name: "workdir", files: []imagebuild.TarEntry{{Name: "/work", Link: c.dir}}, cfg: func(cfg *runtimeapi.ContainerConfig) {
			cfg.WorkingDir = "/work/sub"
		}},
		{name: "file-mount-dir", files: []imagebuild.TarEntry{{Name: "/conf", Link: c.dir}}, cfg: func(cfg *runtimeapi.ContainerConfig) {
			cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/conf/app.conf", HostPath: conf, Readonly: true}}
		}},
		{name: "file-mount-final", files: []imagebuild.TarEntry{{Name: "/app.conf", Link: c.secret}}, cfg: func(cfg *runtimeapi.ContainerConfig) {
			cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/app.conf", HostPath: conf, Readonly: true}}
		}},
		{name: "termination-log", files: []imagebuild.TarEntry{{Name: "/logs", Link: climb(c.dir)}}, cfg: func(cfg *runtimeapi.ContainerConfig) {
			cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/logs/termination-log", HostPath: termination}}
		}},
		{name: "mount-point", files: []imagebuild.TarEntry{{Name: "/mnt", Link: c.dir}}, cfg: func(cfg *runtimeapi.ContainerConfig) {
			cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/mnt/data", HostPath: data}}
		}},
		{name: "masked", files: []imagebuild.TarEntry{{Name: "/hidden", Link: c.dir}, {Name: "/hidden-file", Link: c.secret}}, cfg: func(cfg *runtimeapi.ContainerConfig) {
			cfg.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{MaskedPaths: []string{"/hidden", "/hidden-file"}}}
		}},
		{name: "readonly", files: []imagebuild.TarEntry{{Name: "/ro", Link: c.dir}, {Name: "/ro-rel", Link: climb(c.dir)}}, cfg: func(cfg *runtimeapi.ContainerConfig) {
			cfg.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{ReadonlyPaths: []string{"/ro", "/ro-rel"}}}
		}},
		{name: "image-volume", files: []imagebuild.TarEntry{{Name: "/link", Link: c.dir}}, cfg: func(cfg *runtimeapi.ContainerConfig) {
			cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/vol", Readonly: true, Image: &runtimeapi.ImageSpec{Image: cfg.Image.Image}, ImageSubPath: "link"}}
		}},
	}
	sb := e.sandbox("hostile-images")
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img := e.hostileImage(tc.name, tc.files...)
			cfg := ctrConfig(tc.name, img, "sleep", "3600")
			if tc.cfg != nil {
				tc.cfg(cfg)
			}
			ctr, err := e.m.CreateContainer(ctx, sb.ID, cfg)
			if err == nil {
				err = e.m.StartContainer(ctx, ctr.ID)
			}
			if err == nil {
				// Whatever the module can reach through the paths the image
				// planted, the host secret is not there.
				for _, p := range []string{"/etc/hostname", "/etc/resolv.conf", "/etc/secret", "/dev/null", "/work/secret", "/conf/secret",
					"/app.conf", "/logs/secret", "/mnt/secret", "/hidden/secret", "/hidden-file", "/ro/secret", "/ro-rel/secret", "/vol/secret"} {
					_, out, _, err := e.m.ExecSync(ctx, ctr.ID, []string{"cat", p}, 10, 1<<20)
					if err != nil {
						t.Fatal(err)
					}
					if strings.Contains(string(out), hostSecret) {
						t.Fatalf("the module read the host secret through %s", p)
					}
				}
			} else if !errdefs.IsInvalidArgument(err) && !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("refused without saying the image is at fault: %v", err)
			}
			if ctr.ID != "" {
				if err := e.m.RemoveContainer(ctr.ID); err != nil {
					t.Fatal(err)
				}
			}
			c.untouched(t)
			if b, _ := os.ReadFile(conf); string(b) != "config" {
				t.Fatalf("the mounted host file changed: %q", b)
			}
		})
	}
}

// A running module plants symlinks that climb out of its root and renames
// them over its mounted files, then the daemon does what it does after a
// module ran: copies writable file mounts back at exit, starts exec
// instances in the root, removes the root. Nothing follows them.
func TestModuleSymlinksNeverLeadOut(t *testing.T) {
	e := newEnv(t)
	c := newCanary(t)
	img := e.hostileImage("planter", imagebuild.TarEntry{Name: "/ro/kept", Data: []byte("read-only")})
	sb := e.sandbox("planters")
	ctx := context.Background()

	// Kubelet's termination-log mount: hard-linked into the root, and, on
	// another filesystem than the root (a tmpfs here), copied in and back.
	host := t.TempDir()
	linked := filepath.Join(host, "termination-log")
	os.WriteFile(linked, []byte("kubelet's"), 0o644)
	other := filepath.Join(host, "tmpfs")
	os.MkdirAll(other, 0o755)
	if err := syscall.Mount("none", other, "tmpfs", 0, ""); err != nil {
		t.Fatalf("mount a tmpfs for the test: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(other, syscall.MNT_DETACH) })
	copied := filepath.Join(other, "termination-log")
	os.WriteFile(copied, []byte("kubelet's"), 0o644)

	for name, hostFile := range map[string]string{"linked": linked, "copied": copied} {
		t.Run(name, func(t *testing.T) {
			cfg := ctrConfig("planter-"+name, img, "sleep", "3600")
			cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/dev/termination-log", HostPath: hostFile}}
			cfg.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{ReadonlyPaths: []string{"/ro"}}}
			ctr := e.start(sb, cfg)
			sh := func(script string) string {
				t.Helper()
				code, out, errOut, err := e.m.ExecSync(ctx, ctr.ID, []string{"sh", "-c", script}, 10, 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				if code != 0 {
					t.Fatalf("%s: exit %d: %s%s", script, code, out, errOut)
				}
				return string(out)
			}
			// Relative symlinks climbing out of the root, renamed over the
			// mounted file and over the read-only path's directory.
			sh("ln -s " + climb(c.secret) + " /planted && mv /planted /dev/termination-log")
			sh("mv --raw ro ro-moved && ln -s --raw " + climb(c.dir) + " ro")
			// A new exec instance preopens the read-only path as it was
			// pinned at start, not through the symlink now standing there.
			if out := sh("cat /ro/secret 2>&1; true"); strings.Contains(out, hostSecret) {
				t.Error("an exec instance read the host secret through a planted symlink")
			}
			if err := e.m.StopContainer(ctr.ID, 0); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(hostFile); strings.Contains(string(b), hostSecret) {
				t.Fatalf("the host secret was copied into kubelet's termination log: %q", b)
			}
			if err := e.m.RemoveContainer(ctr.ID); err != nil {
				t.Fatal(err)
			}
			c.untouched(t)
		})
	}
}

// Copies of read-only file mounts (kubelet's secrets and configMaps) keep
// their source's exact mode, whatever the daemon's umask: a 0400 secret
// never becomes readable by others in the container's root.
func TestFileMountCopiesKeepTheirMode(t *testing.T) {
	e := newEnv(t)
	img := e.hostileImage("modes", imagebuild.TarEntry{Name: "/etc/secret", Data: []byte("from the image")})
	sb := e.sandbox("modes")
	host := t.TempDir()
	modes := map[string]os.FileMode{"secret": 0o400, "config": 0o640, "plain": 0o644}
	cfg := ctrConfig("modes", img, "sleep", "3600")
	for name, mode := range modes {
		p := filepath.Join(host, name)
		os.WriteFile(p, []byte(name), mode)
		os.Chmod(p, mode)
		cfg.Mounts = append(cfg.Mounts, &runtimeapi.Mount{ContainerPath: "/etc/" + name, HostPath: p, Readonly: true})
	}
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	ctr := e.start(sb, cfg)
	for name, mode := range modes {
		fi, err := os.Lstat(filepath.Join(e.m.rootfs(ctr.ID), "etc", name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("copy of a %v %s is %v", mode, name, fi.Mode().Perm())
		}
	}
	if _, out, _, _ := e.m.ExecSync(context.Background(), ctr.ID, []string{"cat", "/etc/secret"}, 10, 1<<10); string(out) != "secret" {
		t.Errorf("the mount did not replace the image's file: %q", out)
	}
}

// CRI input that cannot be honoured safely is refused with
// InvalidArgument naming the field, before anything is made of it.
func TestCRIInputRefusals(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("inputs")
	ctx := context.Background()

	pods := map[string]func(*runtimeapi.PodSandboxConfig){
		"metadata.name":      func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = "a/b" },
		"metadata.namespace": func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Namespace = "default/x" },
		"metadata.uid":       func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Uid = "u\x00id" },
		"log_directory":      func(c *runtimeapi.PodSandboxConfig) { c.LogDirectory = "relative/logs" },
		"hostname":           func(c *runtimeapi.PodSandboxConfig) { c.Hostname = "host\x00name" },
		"dns_config.servers": func(c *runtimeapi.PodSandboxConfig) {
			c.DnsConfig = &runtimeapi.DNSConfig{Servers: []string{"1.1.1.1\nnameserver 6.6.6.6"}}
		},
		"port_mappings[1]: ports": func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80}, {ContainerPort: 80, HostPort: 70000}}
		},
		"port_mappings[0]: host port": func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{{HostPort: 8080}}
		},
		"port_mappings[0].host_ip": func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 8080, HostIp: "0.0.0.0 -j ACCEPT"}}
		},
		"port_mappings[0].protocol": func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, Protocol: 9}}
		},
	}
	for field, mutate := range pods {
		cfg := podConfig("bad-pod", e.dir)
		mutate(cfg)
		_, err := e.m.RunSandbox(context.Background(), cfg, "")
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), field) {
			t.Errorf("pod with a bad %s: %v", field, err)
		}
	}
	// Names reach the CNI plugins as CNI_ARGS: no separator gets through
	// to add an argument (host-local's IP= would pick the pod's address).
	for field, mutate := range map[string]func(*runtimeapi.PodSandboxConfig){
		"metadata.name":      func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = "web;IP=10.89.0.1" },
		"metadata.namespace": func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Namespace = "ns;IgnoreUnknown=0" },
		"metadata.uid":       func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Uid = "u=1" },
	} {
		cfg := podConfig("cni-args", e.dir)
		mutate(cfg)
		_, err := e.m.RunSandbox(context.Background(), cfg, "")
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), "CNI") {
			t.Errorf("pod with a CNI separator in %s: %v", field, err)
		}
	}
	// Two pods whose names would join to the same reservation.
	a, b := podConfig("x", e.dir), podConfig("y", e.dir)
	a.Metadata.Namespace, a.Metadata.Name = "ns/a", "b"
	b.Metadata.Namespace, b.Metadata.Name = "ns", "a/b"
	a.Metadata.Uid, b.Metadata.Uid = "u", "u"
	if _, err := e.m.RunSandbox(context.Background(), a, ""); !errdefs.IsInvalidArgument(err) {
		t.Errorf("namespace with '/': %v", err)
	}

	containers := map[string]func(*runtimeapi.ContainerConfig){
		"metadata.name": func(c *runtimeapi.ContainerConfig) { c.Metadata.Name = "x/y" },
		"args[1]":       func(c *runtimeapi.ContainerConfig) { c.Args = []string{"ok", "n\x00ul"} },
		"command[0]":    func(c *runtimeapi.ContainerConfig) { c.Command = []string{"\xff\xfe"} },
		"envs[1] (BAD)": func(c *runtimeapi.ContainerConfig) {
			c.Envs = append(c.Envs, &runtimeapi.KeyValue{Key: "BAD", Value: []byte("\xc3\x28")})
		},
		"envs[1] key": func(c *runtimeapi.ContainerConfig) {
			c.Envs = append(c.Envs, &runtimeapi.KeyValue{Key: "A=B", Value: []byte("x")})
		},
		"envs[1] (NUL)": func(c *runtimeapi.ContainerConfig) {
			c.Envs = append(c.Envs, &runtimeapi.KeyValue{Key: "NUL", Value: []byte("a\x00b")})
		},
		"working_dir": func(c *runtimeapi.ContainerConfig) { c.WorkingDir = "/tmp\x00/x" },
		"log_path":    func(c *runtimeapi.ContainerConfig) { c.LogPath = "../../../etc/cron.d/job" },
		"mounts[0].host_path": func(c *runtimeapi.ContainerConfig) {
			c.Mounts = []*runtimeapi.Mount{{ContainerPath: "/x", HostPath: "/tmp\x00"}}
		},
		"cpu_quota": func(c *runtimeapi.ContainerConfig) {
			c.Linux = &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{CpuQuota: 500, CpuPeriod: 100000}}
		},
	}
	for field, mutate := range containers {
		cfg := ctrConfig("bad", img)
		mutate(cfg)
		_, err := e.m.CreateContainer(ctx, sb.ID, cfg)
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), field) {
			t.Errorf("container with a bad %s: %v", field, err)
		}
	}
	for _, lp := range []string{"/abs.log", "../up.log", "a/../../b.log"} {
		cfg := ctrConfig("bad", img)
		cfg.LogPath = lp
		if _, err := e.m.CreateContainer(ctx, sb.ID, cfg); !errdefs.IsInvalidArgument(err) {
			t.Errorf("log path %q: %v", lp, err)
		}
	}
	ctr := e.start(sb, ctrConfig("running", img, "sleep-forever"))
	if _, _, _, err := e.m.ExecSync(ctx, ctr.ID, []string{"x", "a\x00b"}, 10, 1<<10); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "command[1]") {
		t.Errorf("exec with a NUL byte: %v", err)
	}
	if err := e.m.UpdateResources(ctr.ID, &runtimeapi.LinuxContainerResources{CpuQuota: 999}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("update to a CPU quota under 1ms: %v", err)
	}
	// Nothing of the refused containers was left on disk.
	entries, _ := os.ReadDir(filepath.Join(e.dir, "root", "roots"))
	if len(entries) != 1 {
		t.Errorf("container roots: %d, want 1", len(entries))
	}
}

// A Stop or Remove racing a Start never leaves an instance running that no
// record lists; nor does a container come back after a restart.
func TestStartRacingStopAndRemove(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("races")
	ctx := context.Background()
	const rounds = 12
	var removed []Container
	for i := 0; i < rounds; i++ {
		c := e.container(sb, "racer-"+strconv.Itoa(i), img, "sleep-forever")
		started := make(chan error, 1)
		go func() { started <- e.m.StartContainer(ctx, c.ID) }()
		if err := e.m.RemoveContainer(c.ID); err != nil {
			t.Fatalf("remove racing start: %v", err)
		}
		<-started // either it started (and was stopped) or it was refused
		removed = append(removed, c)
	}
	for _, c := range removed {
		if _, err := e.m.Container(c.ID); !errdefs.IsNotFound(err) {
			t.Fatalf("removed container %s is still listed: %v", c.ID, err)
		}
	}
	// A control container ticks in the same run: once it has ticked a few
	// times more, a racer left running would have ticked too.
	control := e.start(sb, ctrConfig("control", img, "sleep-forever"))
	sizes := map[string]int64{}
	for _, c := range removed {
		sizes[c.LogPath] = fileSize(c.LogPath)
	}
	controlLog := filepath.Join(e.dir, "pods", "races", "control.log")
	crilogtest.WaitFor(t, controlLog, "stdout", "tick 3")
	for _, c := range removed {
		if got := fileSize(c.LogPath); got != sizes[c.LogPath] {
			t.Fatalf("removed container %s is still running: its log grew from %d to %d bytes", c.ID, sizes[c.LogPath], got)
		}
	}
	e.m.StopContainer(control.ID, 0)
	// After a restart, only the control is there.
	e.m.Shutdown()
	e.m = e.manager()
	if all := e.m.Containers(); len(all) != 1 || all[0].ID != control.ID {
		t.Fatalf("after a restart: %d containers", len(all))
	}
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return -1
	}
	return fi.Size()
}

// Exec instances end with their container's stop, as processes in a
// container end with its init, and a removed container keeps none.
func TestExecEndsWithItsContainer(t *testing.T) {
	e := newEnv(t)
	img := e.hostileImage("exec-end")
	sb := e.sandbox("exec-end")
	ctr := e.start(sb, ctrConfig("main", img, "sleep", "3600"))
	type result struct {
		code int32
		err  error
	}
	done := make(chan result, 2)
	for i := 0; i < 2; i++ {
		go func() {
			// No deadline of its own: only the container's end can end it.
			code, _, _, err := e.m.ExecSync(context.Background(), ctr.ID, []string{"sleep", "3600"}, 0, 1<<10)
			done <- result{code, err}
		}()
	}
	waitFor(t, "two exec instances running", func() bool {
		c, err := e.m.containers.get(ctr.ID)
		if err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.run != nil && len(c.run.execs) == 2
	})
	if err := e.m.StopContainer(ctr.ID, 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		select {
		case r := <-done:
			if r.err != nil || r.code != 137 {
				t.Errorf("exec after its container stopped: exit %d, %v", r.code, r.err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("an exec instance outlived its container's stop")
		}
	}
	if _, _, _, err := e.m.ExecSync(context.Background(), ctr.ID, []string{"true"}, 0, 1<<10); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("exec in a stopped container: %v", err)
	}
}

// Attaching with stdin to a container that never reads its input, then
// leaving, costs no goroutine once the session is over.
func TestAttachWithStdinLeaksNothing(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("attach-leak")
	var ctrs []Container
	for i := 0; i < 8; i++ {
		cfg := ctrConfig("deaf-"+strconv.Itoa(i), img, "sleep-forever")
		cfg.Stdin = true
		ctrs = append(ctrs, e.start(sb, cfg))
		crilogtest.WaitFor(t, filepath.Join(e.dir, "pods", "attach-leak", cfg.LogPath), "stdout", "tick 0")
	}
	baseline := runtime.NumGoroutine()
	for _, ctr := range ctrs {
		ctx, cancel := context.WithCancel(context.Background())
		src := &endlessInput{gone: make(chan struct{})}
		attached := make(chan error, 1)
		go func() { attached <- e.m.Attach(ctx, ctr.ID, src, nil, nil, false) }()
		// More than the module's input pipe holds: the feed is stuck now.
		waitFor(t, "the client's input to back up", func() bool { return src.read() >= 96<<10 })
		cancel()
		if err := <-attached; err != nil {
			t.Fatal(err)
		}
		close(src.gone) // the client goes away
	}
	waitFor(t, "attach goroutines to end", func() bool { return runtime.NumGoroutine() <= baseline+2 })
}

// endlessInput is a client's stdin that always has more to send, until the
// client goes away.
type endlessInput struct {
	mu   sync.Mutex
	n    int
	gone chan struct{}
}

func (in *endlessInput) Read(p []byte) (int, error) {
	select {
	case <-in.gone:
		return 0, io.EOF
	default:
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.n += len(p)
	clear(p)
	return len(p), nil
}

func (in *endlessInput) read() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.n
}

// Leftovers of a crash (roots and log directories without records, roots
// an older wasmcri kept on disk) are reclaimed at start-up; what has a
// record stays, and a created container gets its root again.
func TestCrashLeftoversReclaimed(t *testing.T) {
	e := newEnv(t)
	img := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("kept")
	kept := e.container(sb, "kept", img)
	root := filepath.Join(e.dir, "root")
	stray := filepath.Join(root, "roots", newID())
	for _, p := range []string{"containers/" + newID() + "/etc", "sandboxes/" + newID() + "/logs"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A root whose record never committed, mounted as a crash leaves it.
	if err := os.Mkdir(stray, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", stray, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(stray, "left"), []byte("x"), 0o644)
	// A crash: the first manager never shuts down before the second
	// starts (its cleanup runs at the end of the test).
	e.m = e.manager()
	entries, _ := os.ReadDir(filepath.Join(root, "roots"))
	if len(entries) != 1 || entries[0].Name() != kept.ID {
		t.Errorf("container roots after start-up: %v", entries)
	}
	if _, err := os.Stat(filepath.Join(root, "roots", kept.ID, "root", "etc", "hostname")); err != nil {
		t.Errorf("the created container's root was not made again: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "containers")); !os.IsNotExist(err) {
		t.Errorf("roots an older wasmcri kept on disk: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "sandboxes")); len(entries) != 0 {
		t.Errorf("sandbox directories after start-up: %v", entries)
	}
}

// A module whose start section loops forever is stoppable from the moment
// its container starts: StartContainer returns, exec's timeout ends an
// exec of it, StopContainer and RemoveContainer end it.
func TestStartSectionLoopIsStoppable(t *testing.T) {
	e := newEnv(t)
	img := e.image("startspin", testmodule.Wat(t, testmodule.StartSpin))
	sb := e.sandbox("startspin")
	ctx := context.Background()
	c := e.container(sb, "spinner", img)
	started := make(chan error, 1)
	go func() { started <- e.m.StartContainer(ctx, c.ID) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("StartContainer never returned: the start section runs before the instance is registered")
	}
	if got, _ := e.m.Container(c.ID); got.State != ContainerRunning {
		t.Fatalf("state %s", got.State)
	}
	execDone := make(chan error, 1)
	go func() {
		_, _, _, err := e.m.ExecSync(ctx, c.ID, []string{"x"}, 1, 1<<10)
		execDone <- err
	}()
	select {
	case err := <-execDone:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("exec past its timeout: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("an exec whose start section loops outlived its timeout")
	}
	if err := e.m.StopContainer(c.ID, 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.m.Container(c.ID); got.State != ContainerExited || got.ExitCode != 137 {
		t.Fatalf("after stop: %s, exit %d (%s)", got.State, got.ExitCode, got.Reason)
	}
	if err := e.m.RemoveContainer(c.ID); err != nil {
		t.Fatal(err)
	}
}

// Table and memory bombs under a container's limit end that container
// OOMKilled; its neighbour runs on.
func TestMemoryBombsEndOOMKilled(t *testing.T) {
	e := newEnv(t)
	neighbourImg := e.image("hello", testmodule.Hello(t))
	sb := e.sandbox("bombs")
	neighbour := e.start(sb, ctrConfig("neighbour", neighbourImg, "sleep-forever"))
	for name, wat := range map[string]string{
		"table":          testmodule.TableBomb,
		"many-memories":  testmodule.ManyMemories(40, 1),
		"initial-memory": testmodule.ManyMemories(8, 160), // 80 MiB at instantiation
	} {
		img := e.image("bomb-"+name, testmodule.Wat(t, wat))
		cfg := ctrConfig(name, img)
		cfg.Linux = &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20}}
		c := e.start(sb, cfg)
		got := e.waitExited(c.ID, 30*time.Second)
		if got.Reason != ReasonOOMKilled || got.ExitCode != 137 {
			t.Errorf("%s bomb under 64 MiB: %s, exit %d: %s", name, got.Reason, got.ExitCode, got.Message)
		}
	}
	if got, _ := e.m.Container(neighbour.ID); got.State != ContainerRunning {
		t.Fatalf("the neighbour is %s", got.State)
	}
}
