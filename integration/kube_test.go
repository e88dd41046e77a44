package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The kubelet tests run pinned upstream binaries (kubelet, kube-apiserver,
// kubectl, etcd) that `make test` builds from the Go module proxy into a
// cache keyed by version (hack/build-k8s-tool.sh) and names in KUBELET,
// KUBE_APISERVER, KUBECTL and ETCD.

// kubeletConfig is a KubeletConfiguration for this kind of machine: cgroup
// v1, no CAP_SYS_RESOURCE (so no negative oom_score_adj), everything on
// loopback and under the test's own directories. Each of set is a
// top-level "field: value" line that replaces the field's line, or is
// added (kubelet refuses a field given twice).
func kubeletConfig(t *testing.T, dir, socket, manifests, podLogs string, set ...string) string {
	t.Helper()
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
imageServiceEndpoint: unix://%s
staticPodPath: %s
podLogsDir: %s
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
oomScoreAdj: 0
makeIPTablesUtilChains: false
localStorageCapacityIsolation: false
fileCheckFrequency: 1s
syncFrequency: 5s
nodeStatusUpdateFrequency: 2s
evictionHard: {}
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
`, socket, socket, manifests, podLogs, freePort(t), freePort(t))
	for _, line := range set {
		field, _, _ := strings.Cut(line, ":")
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(field) + `:.*$`)
		if re.MatchString(cfg) {
			cfg = re.ReplaceAllLiteralString(cfg, line)
		} else {
			cfg += line + "\n"
		}
	}
	p := filepath.Join(dir, "kubelet.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type kubelet struct {
	dir, manifests, podLogs, log string
	node                         string
}

// startKubelet runs a stock kubelet against d's socket; with a kubeconfig
// it registers with that API server, without one it runs standalone.
func startKubelet(t *testing.T, d *daemon, kubeconfig string) *kubelet {
	t.Helper()
	return startKubeletWith(t, d, kubeconfig, 4)
}

// startKubeletWith is startKubelet logging at verbosity v, its config
// changed by set (see kubeletConfig).
func startKubeletWith(t *testing.T, d *daemon, kubeconfig string, v int, set ...string) *kubelet {
	t.Helper()
	bin := tool(t, "KUBELET", "kubelet")
	// kubelet refuses a loopback --node-ip, but takes an IP given as the
	// hostname for the node's InternalIP: the API server then reaches the
	// kubelet (for logs and exec) on 127.0.0.1, where it listens.
	k := &kubelet{dir: t.TempDir(), node: "127.0.0.1"}
	k.manifests, k.podLogs, k.log = filepath.Join(k.dir, "manifests"), filepath.Join(k.dir, "pod-logs"), filepath.Join(k.dir, "kubelet.log")
	for _, p := range []string{k.manifests, k.podLogs} {
		os.MkdirAll(p, 0o755)
	}
	args := []string{
		"--config", kubeletConfig(t, k.dir, d.socket, k.manifests, k.podLogs, set...),
		"--root-dir", filepath.Join(k.dir, "root"),
		"--cert-dir", filepath.Join(k.dir, "pki"),
		"--hostname-override", k.node,
		"--v", fmt.Sprint(v),
	}
	if kubeconfig != "" {
		args = append(args, "--kubeconfig", kubeconfig)
	}
	// kubelet bind-mounts its root dir onto itself and mounts volumes under
	// it; once it is killed (the cleanup registered next runs first) those
	// mounts must go before the temp dir can.
	t.Cleanup(func() { unmountUnder(t, k.dir) })
	t.Cleanup(func() { removeLogLinksInto(t, k.dir) })
	startProcess(t, exec.Command(bin, args...), k.log)
	return k
}

// legacyLogDir is where kubelet links each container's log, whatever its
// config says: a directory of the host's.
const legacyLogDir = "/var/log/containers"

// removeLogLinksInto removes kubelet's links in legacyLogDir that lead
// into dir. A killed kubelet leaves them, and every later kubelet on the
// host asks its runtime after their containers in its garbage collection.
func removeLogLinksInto(t *testing.T, dir string) {
	entries, err := os.ReadDir(legacyLogDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(legacyLogDir, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			if err := os.Remove(p); err != nil {
				t.Error(err)
			}
		}
	}
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	points := mountsUnder(t, dir)
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", p, err)
		}
	}
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return nil
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	return points
}

// writeManifest puts a static pod manifest where the kubelet looks.
func (k *kubelet) writeManifest(t *testing.T, name, yaml string) string {
	t.Helper()
	p := filepath.Join(k.manifests, name+".yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// criContainer is what the tests read of `crictl ps -a -o json`.
type criContainer struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Metadata struct {
		Name    string `json:"name"`
		Attempt int    `json:"attempt"`
	} `json:"metadata"`
	Labels map[string]string `json:"labels"`
}

// containersOf lists the containers of a pod, newest attempt first.
func (d *daemon) containersOf(pod string) []criContainer {
	d.t.Helper()
	var out struct {
		Containers []criContainer `json:"containers"`
	}
	if err := json.Unmarshal([]byte(d.must("ps", "-a", "-o", "json", "--label", "io.kubernetes.pod.name="+pod)), &out); err != nil {
		d.t.Fatal(err)
	}
	cs := out.Containers
	for i := range cs {
		for j := i + 1; j < len(cs); j++ {
			if cs[j].Metadata.Attempt > cs[i].Metadata.Attempt {
				cs[i], cs[j] = cs[j], cs[i]
			}
		}
	}
	return cs
}

// controlPlane is etcd and kube-apiserver on loopback, with kubectl.
type controlPlane struct {
	dir, kubeconfig, kubectl string
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	etcdBin, apiserverBin := tool(t, "ETCD", "etcd"), tool(t, "KUBE_APISERVER", "kube-apiserver")
	cp := &controlPlane{dir: t.TempDir(), kubectl: tool(t, "KUBECTL", "kubectl")}

	client, peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	startProcess(t, exec.Command(etcdBin,
		"--data-dir", filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default="+peer,
	), filepath.Join(cp.dir, "etcd.log"))
	waitFor(t, "etcd healthy", 30*time.Second, func() bool {
		resp, err := http.Get(client + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// Service-account keys and a static token for the tests' admin user.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(cp.dir, "sa.key")
	pubFile := filepath.Join(cp.dir, "sa.pub")
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600)
	token := "wasmcri-test-token"
	tokens := filepath.Join(cp.dir, "tokens.csv")
	os.WriteFile(tokens, []byte(token+`,admin,admin,"system:masters"`+"\n"), 0o600)

	port := freePort(t)
	startProcess(t, exec.Command(apiserverBin,
		"--etcd-servers", client,
		"--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(port),
		"--advertise-address", "127.0.0.1",
		// The kubernetes service endpoint may not be a loopback address.
		"--endpoint-reconciler-type", "none",
		"--cert-dir", filepath.Join(cp.dir, "apiserver-pki"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", pubFile,
		"--service-account-signing-key-file", keyFile,
		"--token-auth-file", tokens,
		"--authorization-mode", "AlwaysAllow",
		"--disable-admission-plugins", "ServiceAccount",
		"--kubelet-preferred-address-types", "InternalIP",
	), filepath.Join(cp.dir, "kube-apiserver.log"))

	cp.kubeconfig = filepath.Join(cp.dir, "kubeconfig")
	os.WriteFile(cp.kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://127.0.0.1:%d", insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: %s}
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, port, token)), 0o600)
	waitFor(t, "kube-apiserver ready", 90*time.Second, func() bool {
		_, err := cp.run("get", "--raw", "/readyz")
		return err == nil
	})
	return cp
}

// run calls kubectl and returns stdout.
func (cp *controlPlane) run(args ...string) (string, error) {
	return cp.runWithInput(nil, args...)
}

func (cp *controlPlane) runWithInput(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, cp.kubectl, append([]string{"--kubeconfig", cp.kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (cp *controlPlane) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := cp.run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (cp *controlPlane) apply(t *testing.T, yaml string) {
	t.Helper()
	if _, err := cp.runWithInput([]byte(yaml), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
}

// jsonpath reads one field of an object.
func (cp *controlPlane) jsonpath(kind, name, path string) string {
	out, _ := cp.run("get", kind, name, "-o", "jsonpath={"+path+"}")
	return out
}
