package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestDefaultRoundTrips(t *testing.T) {
	b, err := Default().Encode()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(b)
	if err != nil {
		t.Fatalf("default config does not parse back: %v\n%s", err, b)
	}
	if cfg.Root != DefaultRoot || cfg.State != DefaultState || cfg.GRPC.Address != DefaultAddress {
		t.Fatalf("defaults changed on round trip: %+v", cfg)
	}
	if cfg.Image.PullTimeout.Duration != 10*time.Minute {
		t.Fatalf("pull_timeout = %v", cfg.Image.PullTimeout)
	}
	for _, want := range []string{`root = "/var/lib/wasmcri"`, `state = "/run/wasmcri"`, `address = "/run/wasmcri/wasmcri.sock"`, `handlers = ["wasmtime"]`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("default TOML lacks %s:\n%s", want, b)
		}
	}
}

func TestParseOverridesDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
version = 1
root = "/tmp/r"
[grpc]
address = "unix:///tmp/s.sock"
[image]
pull_timeout = "90s"
[registry]
plain_http = ["myregistry:5000"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Root != "/tmp/r" || cfg.State != DefaultState {
		t.Errorf("root/state = %q/%q", cfg.Root, cfg.State)
	}
	if cfg.GRPC.Address != "/tmp/s.sock" {
		t.Errorf("unix:// prefix not stripped: %q", cfg.GRPC.Address)
	}
	if cfg.Image.PullTimeout.Duration != 90*time.Second {
		t.Errorf("pull_timeout = %v", cfg.Image.PullTimeout)
	}
	if len(cfg.Registry.PlainHTTP) != 1 || cfg.Registry.PlainHTTP[0] != "myregistry:5000" {
		t.Errorf("plain_http = %v", cfg.Registry.PlainHTTP)
	}
}

func TestParseRefusesNamingTheKey(t *testing.T) {
	for _, tc := range []struct{ name, toml, key string }{
		{"unknown top-level key", `rooot = "/x"`, "rooot"},
		{"unknown nested key", "[grpc]\nadress = \"/x.sock\"", "grpc.adress"},
		{"unknown table", "[plugins]\nx = 1", "plugins"},
		{"relative root", `root = "var/lib"`, "root"},
		{"relative state", `state = "run"`, "state"},
		{"tcp address", "[grpc]\naddress = \"tcp://127.0.0.1:1\"", "grpc.address"},
		{"bad level", "[log]\nlevel = \"loud\"", "log.level"},
		{"bad format", "[log]\nformat = \"xml\"", "log.format"},
		{"no handlers", "[runtime]\nhandlers = []", "runtime.handlers"},
		{"duplicate handler", "[runtime]\nhandlers = [\"a\", \"a\"]", "runtime.handlers"},
		{"negative layer size", "[image]\nmax_layer_size = -1", "image.max_layer_size"},
		{"bad duration", "[image]\npull_timeout = \"soon\"", "pull_timeout"},
		{"wrong type", "[grpc]\nmax_recv_message_size = \"big\"", "max_recv_message_size"},
		{"bad plain_http host", "[registry]\nplain_http = [\"http://x\"]", "registry.plain_http"},
		{"future version", "version = 9", "version"},
		{"stream address", "[stream]\naddress = \"localhost\"", "stream.address"},
		{"stream port", "[stream]\nport = \"http\"", "stream.port"},
		{"pprof on TCP", "[debug]\npprof_address = \"127.0.0.1:6060\"", "debug.pprof_address"},
		{"pprof on the CRI socket", "[debug]\npprof_address = \"unix:///run/wasmcri/wasmcri.sock\"", "debug.pprof_address"},
		{"cgroup driver", "[runtime]\ncgroup_driver = \"none\"", "runtime.cgroup_driver"},
		{"no CNI plugin dirs", "[network]\ncni_bin_dirs = []", "network.cni_bin_dirs"},
		{"relative CNI conf dir", "[network]\ncni_conf_dir = \"etc/cni\"", "network"},
		{"bridge name too long", "[network]\ndefault_bridge = \"a-bridge-name-too-long\"", "network.default_bridge"},
		{"bridge name with a slash", "[network]\ndefault_bridge = \"../x\"", "network.default_bridge"},
		{"subnet not CIDR", "[network]\ndefault_subnet = \"10.89.0.0\"", "network.default_subnet"},
		{"IPv6 subnet", "[network]\ndefault_subnet = \"fd00::/64\"", "network.default_subnet"},
		{"subnet too small", "[network]\ndefault_subnet = \"10.89.0.0/31\"", "network.default_subnet"},
		{"negative pool", "[network]\npool_size = -1", "network.pool_size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml))
			if err == nil {
				t.Fatalf("accepted %q", tc.toml)
			}
			if !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("error %q does not name %q", err, tc.key)
			}
		})
	}
}

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{"unix:///run/x.sock": "/run/x.sock", "/run/x.sock": "/run/x.sock"} {
		got, err := SocketPath(in)
		if err != nil || got != want {
			t.Errorf("SocketPath(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := SocketPath("unix://relative.sock"); err == nil {
		t.Error("relative socket path accepted")
	}
}

// deploy/config.toml is what operators install: it must load, and stay the
// defaults this build has.
func TestShippedConfigIsTheDefault(t *testing.T) {
	b, err := os.ReadFile("../deploy/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(b); err != nil {
		t.Fatalf("deploy/config.toml: %v", err)
	}
	want, _ := Default().Encode()
	if string(b) != string(want) {
		t.Fatalf("deploy/config.toml differs from the defaults; regenerate it with `wasmcri config default`")
	}
}
