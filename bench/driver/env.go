package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a background process of the benchmark, stopped at the end.
type proc struct {
	cmd *exec.Cmd
	log string
}

func startProc(logPath, bin string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &proc{cmd: cmd, log: logPath}, nil
}

func (p *proc) stop() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// status reads VmRSS (KiB) and Threads of a process.
func (p *proc) status() (rssKiB, threads int) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "VmRSS:":
			rssKiB, _ = strconv.Atoi(fields[1])
		case "Threads:":
			threads, _ = strconv.Atoi(fields[1])
		}
	}
	return rssKiB, threads
}

// pss reads the process's proportional set size (KiB): its RSS with each
// page shared among mappings counted once in total. A module's data image
// is mapped copy-on-write into every instance's memory, which RSS counts
// once per instance although it is one page in memory.
func (p *proc) pss() int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// cpuTime is the CPU time (user and system) a process has used so far,
// from /proc in ticks of 10ms.
func (p *proc) cpuTime() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func waitFor(what string, within time.Duration, ok func() bool) error {
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startRegistry runs Debian's docker-registry on loopback.
func startRegistry(dir string) (string, *proc, error) {
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		return "", nil, fmt.Errorf("docker-registry is not installed (apt-get install docker-registry)")
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort())
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", filepath.Join(dir, "registry"), addr)
	cfgPath := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return "", nil, err
	}
	p, err := startProc(filepath.Join(dir, "registry.log"), bin, "serve", cfgPath)
	if err != nil {
		return "", nil, err
	}
	err = waitFor("registry", 20*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return addr, p, err
}

// benchBridge is the bench daemons' pod network bridge, removed at the end.
const benchBridge = "wcribench"

// daemonProc is a wasmcri process with its CRI and pprof sockets.
type daemonProc struct {
	*proc
	socket, pprof string
}

// startWasmcri starts a wasmcri daemon in dir; poolSize is its
// network.pool_size, or the default when negative.
func startWasmcri(bin, dir string, poolSize int) (*daemonProc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	pprof := filepath.Join(dir, "pprof.sock")
	// A pod network of its own: no node CNI configuration, a bridge of
	// its own (removed with the suite).
	cniDirs := []string{"/usr/lib/cni", "/opt/cni/bin"}
	if v := os.Getenv("WASMCRI_CNI_DIRS"); v != "" {
		cniDirs = strings.Split(v, ":")
	}
	quoted := make([]string, len(cniDirs))
	for i, d := range cniDirs {
		quoted[i] = strconv.Quote(d)
	}
	cfg := fmt.Sprintf("root = %q\nstate = %q\n[grpc]\naddress = %q\n[log]\nlevel = \"info\"\n[debug]\npprof_address = %q\n"+
		"[network]\ncni_bin_dirs = [%s]\ncni_conf_dir = %q\ndefault_bridge = %q\ndefault_subnet = \"10.254.0.0/16\"\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "wasmcri.sock"), pprof,
		strings.Join(quoted, ", "), filepath.Join(dir, "net.d"), benchBridge)
	if poolSize >= 0 {
		cfg += fmt.Sprintf("pool_size = %d\n", poolSize)
	}
	cfgPath := filepath.Join(dir, "wasmcri.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	p, err := startProc(filepath.Join(dir, "wasmcri.log"), bin, "serve", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	d := &daemonProc{proc: p, socket: filepath.Join(dir, "wasmcri.sock"), pprof: pprof}
	return d, waitFor("wasmcri socket", 30*time.Second, func() bool {
		c, err := net.Dial("unix", d.socket)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// machine describes where the figures were taken.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if len(f) > 1 {
			kib, _ := strconv.Atoi(f[1])
			mem = fmt.Sprintf("%.0f GiB", float64(kib)/(1<<20))
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%d × %s, %s RAM, Linux %s, %s", runtime.NumCPU(), model, mem, kernel, runtime.Version())
}

// buildStatic builds a Go program as a static linux binary.
func buildStatic(ctx context.Context, dir, name, src string) (string, error) {
	srcDir := filepath.Join(dir, name+"-src")
	os.MkdirAll(srcDir, 0o755)
	if err := os.WriteFile(filepath.Join(srcDir, "main.go"), []byte(src), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(srcDir, "go.mod"), []byte("module "+name+"\ngo 1.22\n"), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, ".")
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v: %s", name, err, b)
	}
	return out, nil
}

// pprofGet fetches a pprof URL path from the daemon's pprof socket.
func (d *daemonProc) pprofGet(path string) (*http.Response, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dialer net.Dialer
		return dialer.DialContext(ctx, "unix", d.pprof)
	}}}
	return client.Get("http://wasmcri" + path)
}
