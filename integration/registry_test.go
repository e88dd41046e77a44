package integration

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// Bearer tokens (the standard token flow) against docker-registry with
// `auth: token`: credentials from the pull request, or from a docker
// config.json on the node.
func TestBearerTokenAuth(t *testing.T) {
	ts := startTokenServer(t, "alice", "wonderland")
	reg := startRegistryWith(t, fmt.Sprintf("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n",
		ts.realm, ts.service, ts.issuer, ts.rootBundle), "http")
	ref := reg + "/private/hello:v1"
	pushWasm(t, testmodule.Wat(t, testmodule.Print), ref, "oci", "--username", "alice", "--password", "wonderland")

	d := newDaemon(t)
	if _, err := d.run("pull", ref); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Fatalf("pull without credentials: %v", err)
	}
	if _, err := d.run("pull", "--creds", "alice:wrong", ref); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Fatalf("pull with a wrong password: %v", err)
	}
	d.must("pull", "--creds", "alice:wonderland", ref)

	// A node's docker config.json serves pulls that bring no credentials.
	dockerConfig := filepath.Join(t.TempDir(), "config.json")
	auths, _ := json.Marshal(map[string]any{"auths": map[string]any{reg: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte("alice:wonderland"))}}})
	os.WriteFile(dockerConfig, auths, 0o600)
	d2 := newDaemonWithConfig(t, fmt.Sprintf("[registry]\ndocker_config = %q\n", dockerConfig))
	d2.must("pull", ref)
	if images := d2.must("images"); !strings.Contains(images, reg+"/private/hello") {
		t.Fatalf("image pulled with the node's credentials is not listed:\n%s", images)
	}
}

// hosts.toml under registry.config_path, as containerd's: mirrors tried in
// order, TLS with a CA file or skip_verify, override_path.
func TestRegistryHostsConfig(t *testing.T) {
	plain := startRegistry(t)
	ca, cert, key := tlsFiles(t)
	secure := startRegistryWith(t, fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", cert, key), "https")
	for _, reg := range []string{plain, secure} {
		pushWasm(t, testmodule.Wat(t, testmodule.Print), reg+"/wasm/hello:v1", "oci")
	}
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))

	hostsDir := t.TempDir()
	hosts := map[string]string{
		// registry.k8s.io served by the first mirror that answers.
		"registry.k8s.io":   fmt.Sprintf("server = \"https://registry.k8s.io\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", dead, plain),
		"trusted.example":   fmt.Sprintf("server = \"https://%s\"\nca = %q\n", secure, ca),
		"insecure.example":  fmt.Sprintf("server = \"https://%s\"\nskip_verify = true\n", secure),
		"untrusted.example": fmt.Sprintf("server = \"https://%s\"\n", secure),
		"path.example":      fmt.Sprintf("[host.\"http://%s/v2\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n", plain),
	}
	for host, toml := range hosts {
		os.MkdirAll(filepath.Join(hostsDir, host), 0o755)
		os.WriteFile(filepath.Join(hostsDir, host, "hosts.toml"), []byte(toml), 0o644)
	}
	d := newDaemonWithConfig(t, fmt.Sprintf("[registry]\nconfig_path = %q\n", hostsDir))

	for _, ref := range []string{"registry.k8s.io/wasm/hello:v1", "trusted.example/wasm/hello:v1", "insecure.example/wasm/hello:v1", "path.example/wasm/hello:v1"} {
		if _, err := d.run("pull", ref); err != nil {
			t.Errorf("pull %s: %v", ref, err)
		}
	}
	if _, err := d.run("pull", "untrusted.example/wasm/hello:v1"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("pull from a registry whose certificate no CA vouches for: %v", err)
	}
	var img struct {
		Status struct {
			RepoTags []string `json:"repoTags"`
		} `json:"status"`
	}
	json.Unmarshal([]byte(d.must("inspecti", "registry.k8s.io/wasm/hello:v1")), &img)
	if len(img.Status.RepoTags) == 0 || !strings.Contains(strings.Join(img.Status.RepoTags, " "), "registry.k8s.io/wasm/hello:v1") {
		t.Errorf("mirrored image's tags: %v", img.Status.RepoTags)
	}
}
