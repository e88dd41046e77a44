package integration

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/config"
)

func TestCLIConfigDefaultAndVersion(t *testing.T) {
	out, err := exec.Command(wasmcriBin, "config", "default").Output()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(out)
	if err != nil {
		t.Fatalf("`wasmcri config default` does not load back: %v\n%s", err, out)
	}
	if cfg.Root != "/var/lib/wasmcri" || cfg.State != "/run/wasmcri" || cfg.GRPC.Address != "/run/wasmcri/wasmcri.sock" {
		t.Errorf("defaults: %+v", cfg)
	}
	v, err := exec.Command(wasmcriBin, "version").Output()
	if err != nil || !strings.Contains(string(v), "wasmcri") || !strings.Contains(string(v), "wasmtime 39.") {
		t.Errorf("version: %s, %v", v, err)
	}
}

func TestCLIRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		file string
		args []string
		says string
	}{
		"unknown key":    {"[grpc]\nadress = \"/x.sock\"\n", nil, "grpc.adress"},
		"bad value":      {"[image]\nmax_layer_size = 0\n", nil, "image.max_layer_size"},
		"bad log flag":   {"", []string{"--log-format", "xml"}, "log.format"},
		"missing config": {"", []string{"--config", filepath.Join(dir, "absent.toml")}, "absent.toml"},
	} {
		t.Run(name, func(t *testing.T) {
			args := []string{"serve", "--root", filepath.Join(dir, "r"), "--state", filepath.Join(dir, "s"), "--listen", "unix://" + filepath.Join(dir, "x.sock")}
			if tc.file != "" {
				p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".toml")
				if err := os.WriteFile(p, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--config", p)
			}
			out, err := exec.Command(wasmcriBin, append(args, tc.args...)...).CombinedOutput()
			if err == nil {
				t.Fatalf("serve started with bad config: %s", out)
			}
			if !strings.Contains(string(out), tc.says) {
				t.Fatalf("error does not name %q:\n%s", tc.says, out)
			}
		})
	}
}

// serve logs JSON when asked and, on SIGINT, stops cleanly: exit 0, socket
// gone, database closed (a second daemon can open it at once).
func TestServeJSONLogAndCleanShutdown(t *testing.T) {
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "wcri")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "s.sock")
	cfgPath := filepath.Join(dir, "config.toml")
	network, _ := testNetworkTOML(t, dir)
	os.WriteFile(cfgPath, []byte("root = \""+filepath.Join(dir, "root")+"\"\n[log]\nformat = \"json\"\n"+network), 0o600)

	for round := 0; round < 2; round++ {
		cmd := exec.Command(wasmcriBin, "serve", "--config", cfgPath, "--state", filepath.Join(dir, "state"), "--listen", "unix://"+sock)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		lines := make(chan string, 100)
		go func() {
			s := bufio.NewScanner(stderr)
			for s.Scan() {
				lines <- s.Text()
			}
			close(lines)
		}()
		waitFor(t, "socket", 20*time.Second, func() bool {
			c, err := net.Dial("unix", sock)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		cmd.Process.Signal(syscall.SIGINT)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("round %d: exit after SIGINT: %v", round, err)
		}
		if m := mountsUnder(t, dir); len(m) != 0 {
			t.Errorf("round %d: a clean stop left mounts: %v", round, m)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Fatalf("round %d: socket left behind: %v", round, err)
		}
		var sawServing bool
		for l := range lines {
			var rec map[string]any
			if err := json.Unmarshal([]byte(l), &rec); err != nil {
				t.Fatalf("log line is not JSON: %q", l)
			}
			if rec["msg"] == "wasmcri serving" && rec["root"] == filepath.Join(dir, "root") {
				sawServing = true
			}
		}
		if !sawServing {
			t.Fatalf("round %d: no JSON 'wasmcri serving' record with the configured root", round)
		}
	}
}
