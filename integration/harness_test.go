package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/testcni"
	"golang.org/x/crypto/bcrypt"
)

// The integration tests drive the built wasmcri binary with the real
// crictl against Debian's docker-registry on 127.0.0.1. `make test` puts
// both tools on PATH (or CRICTL names crictl); without them the tests
// fail rather than skip, so CI can never pass by not running them.

var wasmcriBin string

// buildVersion is the version the binary under test is built with: what
// the Makefile's `git describe` gives, or a commit-like one outside git.
var buildVersion = func() string {
	out, err := exec.Command("git", "-C", repoRoot(), "describe", "--tags", "--always", "--dirty").Output()
	if v := strings.TrimSpace(string(out)); err == nil && v != "" {
		return v
	}
	return "0abc123-dirty"
}()

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wasmcri-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	wasmcriBin = filepath.Join(dir, "wasmcri")
	// Versioned as `make build` versions it: on an untagged checkout, a
	// commit hash (what kubelet must still see as a semantic version).
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+buildVersion, "-o", wasmcriBin, "./cmd/wasmcri")
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build wasmcri: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// tool finds a required program, from an environment variable or PATH.
func tool(t *testing.T, env, name string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run `make test` (or .ci/run), or set %s", name, env)
	}
	return p
}

// startProcess runs cmd in its own process group, killed when the test ends.
func startProcess(t *testing.T, cmd *exec.Cmd, logPath string) *exec.Cmd {
	t.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		logFile.Close()
		if t.Failed() || os.Getenv("WASMCRI_TEST_LOGS") != "" {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- %s log ---\n%s", filepath.Base(cmd.Path), tail(string(b), logTail()))
		}
	})
	return cmd
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitFor(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	waitEvery(t, what, within, 50*time.Millisecond, ok)
}

// waitEvery is waitFor for a condition that costs much to check (listing
// hundreds of pods): polled every interval.
func waitEvery(t *testing.T, what string, within, interval time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(interval)
	}
}

// startRegistry runs Debian's docker-registry on a free loopback port and
// returns its host:port.
func startRegistry(t *testing.T) string {
	return startRegistryWithAuth(t, "", "")
}

// startRegistryWithAuth runs docker-registry behind htpasswd auth when user
// is set: it answers 401 with a Basic challenge to anyone else.
func startRegistryWithAuth(t *testing.T, user, pass string) string {
	t.Helper()
	bin := tool(t, "DOCKER_REGISTRY", "docker-registry")
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr)
	if user != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.DefaultCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: wasmcri-test\n    path: %s\n", htpasswd)
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startProcess(t, exec.Command(bin, "serve", cfgPath), filepath.Join(dir, "registry.log"))
	waitFor(t, "registry answering on "+addr, 10*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK || (user != "" && resp.StatusCode == http.StatusUnauthorized)
	})
	return addr
}

// daemon is one wasmcri process on temp directories.
type daemon struct {
	t      *testing.T
	root   string
	state  string
	socket string
	log    string
	cmd    *exec.Cmd
	// cmdLog is the current process's log file.
	cmdLog       string
	config       string
	crictl       string
	crictlConfig string
	// bridge is the daemon's pod network bridge.
	bridge string
}

func newDaemon(t *testing.T) *daemon {
	t.Helper()
	return newDaemonWithConfig(t, "")
}

// newDaemonWithConfig starts wasmcri with a config file holding toml (its
// root, state and socket still come from flags).
func newDaemonWithConfig(t *testing.T, toml string) *daemon {
	t.Helper()
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "wcri")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	d := &daemon{
		t: t, root: filepath.Join(dir, "root"), state: filepath.Join(dir, "state"),
		socket: filepath.Join(sockDir, "wasmcri.sock"), log: filepath.Join(dir, "wasmcri.log"),
		crictl: tool(t, "CRICTL", "crictl"), crictlConfig: filepath.Join(dir, "crictl.yaml"),
	}
	if err := os.WriteFile(d.crictlConfig, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d.config = filepath.Join(dir, "wasmcri.toml")
	var network string
	network, d.bridge = testNetworkTOML(t, dir)
	toml += network
	if err := os.WriteFile(d.config, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	// The daemon is killed, as a crash would end it, leaving its container
	// roots mounted (the next start would clear them): the test does, after
	// the kill and before its directory goes.
	t.Cleanup(func() { unmountUnder(t, d.state) })
	d.start()
	return d
}

// testNetworkTOML gives a daemon a built-in pod network of its own: the
// test plugins, a bridge and a /24 no other daemon of this run uses (the
// sandbox, cri and bench tests take other /16s), and no node CNI
// configuration.
func testNetworkTOML(t *testing.T, dir string) (toml, bridge string) {
	bridge, subnet := testcni.Network(t, "10.253")
	return fmt.Sprintf("\n[network]\ncni_bin_dirs = %s\ncni_conf_dir = %q\ndefault_bridge = %q\ndefault_subnet = %q\n",
		tomlStrings(testcni.Dirs()), filepath.Join(dir, "net.d"), bridge, subnet), bridge
}

// tomlStrings is a TOML array of strings.
func tomlStrings(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// adminSocket is where `wasmcri image import` reaches this daemon.
func (d *daemon) adminSocket() string {
	return filepath.Join(filepath.Dir(d.socket), "wasmcri-admin.sock")
}

func (d *daemon) start() {
	d.t.Helper()
	cmd := exec.Command(wasmcriBin, "serve", "--config", d.config, "--root", d.root, "--state", d.state, "--listen", "unix://"+d.socket, "--log-level", "debug")
	d.cmdLog = d.log + fmt.Sprintf(".%d", time.Now().UnixNano())
	d.cmd = startProcess(d.t, cmd, d.cmdLog)
	waitFor(d.t, "wasmcri socket", 20*time.Second, func() bool {
		c, err := net.Dial("unix", d.socket)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// stop ends the daemon with sig and waits for it.
func (d *daemon) stop(sig syscall.Signal) error {
	d.cmd.Process.Signal(sig)
	return d.cmd.Wait()
}

// run calls crictl and returns stdout; a failure is returned, not fatal.
func (d *daemon) run(args ...string) (string, error) {
	return d.runWithInput(nil, args...)
}

// crictlCmd is a crictl command line against this daemon.
func (d *daemon) crictlCmd(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--config", d.crictlConfig, "--runtime-endpoint", "unix://" + d.socket, "--image-endpoint", "unix://" + d.socket, "--timeout", "30s"}, args...)
	return exec.CommandContext(ctx, d.crictl, full...)
}

// runWithInput calls crictl with stdin and returns stdout.
func (d *daemon) runWithInput(stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := d.crictlCmd(ctx, args...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("crictl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// must calls crictl and fails the test on error.
func (d *daemon) must(args ...string) string {
	d.t.Helper()
	out, err := d.run(args...)
	if err != nil {
		d.t.Fatal(err)
	}
	return out
}

// writeJSON writes v to a file in the test's temp dir for crictl to read.
func writeJSON(t *testing.T, name string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// inspect returns crictl inspect's status object.
func (d *daemon) inspect(id string) map[string]any {
	d.t.Helper()
	var out struct {
		Status map[string]any `json:"status"`
	}
	if err := json.Unmarshal([]byte(d.must("inspect", id)), &out); err != nil {
		d.t.Fatal(err)
	}
	return out.Status
}

func (d *daemon) waitState(id, state string, within time.Duration) map[string]any {
	d.t.Helper()
	var st map[string]any
	waitFor(d.t, "container "+id[:12]+" "+state, within, func() bool {
		st = d.inspect(id)
		return st["state"] == state
	})
	return st
}

// pushWasm pushes a module with the wasmcri CLI, as a user would, and
// returns the digest it pushed.
func pushWasm(t *testing.T, module []byte, ref, format string, extra ...string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "app.wasm")
	if err := os.WriteFile(file, module, 0o644); err != nil {
		t.Fatal(err)
	}
	// No --insecure: a loopback registry is tried over HTTPS, then HTTP.
	// The flags come after the arguments, as the README shows them.
	args := append([]string{"image", "push", file, ref, "--format", format}, extra...)
	out, err := exec.Command(wasmcriBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("wasmcri image push %s: %v\n%s", ref, err, out)
	}
	_, dgst, ok := strings.Cut(strings.TrimSpace(string(out)), "@")
	if !ok {
		t.Fatalf("wasmcri image push printed no digest: %s", out)
	}
	return dgst
}

// logTail is how many lines of each process's log a failing test shows;
// WASMCRI_TEST_LOGS=N shows N lines of every test's logs.
func logTail() int {
	if n, err := strconv.Atoi(os.Getenv("WASMCRI_TEST_LOGS")); err == nil && n > 0 {
		return n
	}
	return 60
}
