package image

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestRegistryHostsScheme(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		opts   RegistryOptions
		host   string
		scheme string
	}{
		{"remote registries use https", RegistryOptions{}, "registry.example:5000", "https"},
		{"listed hosts use plain http", RegistryOptions{PlainHTTP: []string{"registry.example:5000"}}, "registry.example:5000", "http"},
		{"only the listed host", RegistryOptions{PlainHTTP: []string{"registry.example:5000"}}, "other.example:5000", "https"},
		// Loopback hosts try https and fall back to http in containerd's
		// transport; every test registry here relies on that.
	} {
		hosts, err := tc.opts.Hosts(ctx, nil)(tc.host)
		if err != nil {
			t.Fatal(err)
		}
		if len(hosts) != 1 || hosts[0].Scheme != tc.scheme || hosts[0].Host != tc.host {
			t.Errorf("%s: %+v", tc.name, hosts)
		}
	}
}

// A hosts.toml under config_path sends pulls of a registry to its mirror.
func TestRegistryHostsConfigPath(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "registry.k8s.io"), 0o755); err != nil {
		t.Fatal(err)
	}
	hostsToml := "server = \"https://registry.k8s.io\"\n\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "registry.k8s.io", "hosts.toml"), []byte(hostsToml), 0o644); err != nil {
		t.Fatal(err)
	}
	hosts, err := RegistryOptions{ConfigPath: dir}.Hosts(context.Background(), nil)("registry.k8s.io")
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 || hosts[0].Host != "127.0.0.1:5000" || hosts[0].Scheme != "http" || hosts[1].Host != "registry.k8s.io" {
		t.Fatalf("hosts = %+v", hosts)
	}
}
