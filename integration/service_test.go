package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// startControllers runs kube-controller-manager with the controllers a
// Deployment behind a Service needs: deployments, replica sets and
// endpoint slices.
func startControllers(t *testing.T, cp *controlPlane) {
	t.Helper()
	bin := tool(t, "KUBE_CONTROLLER_MANAGER", "kube-controller-manager")
	startProcess(t, exec.Command(bin,
		"--kubeconfig", cp.kubeconfig,
		"--controllers", "deployment,replicaset,endpointslice",
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--bind-address", "127.0.0.1", "--secure-port", "0",
	), filepath.Join(cp.dir, "kube-controller-manager.log"))
}

// startKubeProxy runs kube-proxy in iptables mode for node, leaving the
// node's conntrack sysctls, route_localnet and its own OOM score alone;
// its rules are removed when the test ends (kube-proxy --cleanup).
func startKubeProxy(t *testing.T, cp *controlPlane, node string) {
	t.Helper()
	bin := tool(t, "KUBE_PROXY", "kube-proxy")
	dir := t.TempDir()
	t.Cleanup(func() {
		if out, err := exec.Command(bin, "--cleanup").CombinedOutput(); err != nil {
			t.Errorf("kube-proxy --cleanup: %v\n%s", err, out)
		}
	})
	startProcess(t, exec.Command(bin,
		"--kubeconfig", cp.kubeconfig,
		"--hostname-override", node,
		"--proxy-mode", "iptables",
		"--cluster-cidr", "10.253.0.0/16",
		"--conntrack-max-per-core", "0",
		"--conntrack-tcp-timeout-established", "0",
		"--conntrack-tcp-timeout-close-wait", "0",
		"--iptables-localhost-nodeports=false",
		"--healthz-bind-address", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--oom-score-adj", "0",
		"--nodeport-addresses", "primary",
	), filepath.Join(dir, "kube-proxy.log"))
}

// The README's Deployment and Service of the example web server, as
// shipped (its image, and a node name for want of a scheduler, filled in),
// on a stock kubelet with kube-controller-manager and kube-proxy: both
// replicas become ready through their httpGet probes, and the Service's
// ClusterIP, from the node, reaches each of them.
func TestKubeletDeploymentBehindService(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	image := reg + "/wasmcri/webserver:v1"
	pushWasm(t, testmodule.Webserver(t), image, "oci")
	cp := startControlPlane(t)
	k := startKubelet(t, d, cp.kubeconfig)
	startControllers(t, cp)
	waitFor(t, "node Ready", 120*time.Second, func() bool {
		return cp.jsonpath("node", k.node, `.status.conditions[?(@.type=="Ready")].status`) == "True"
	})
	startKubeProxy(t, cp, k.node)

	for _, f := range []string{"runtimeclass.yaml", "webserver.yaml"} {
		b, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "kubernetes", f))
		if err != nil {
			t.Fatal(err)
		}
		manifest := strings.ReplaceAll(string(b), "registry.example/webserver:v1", image)
		manifest = strings.Replace(manifest, "      runtimeClassName: wasmtime", "      nodeName: "+k.node+"\n      runtimeClassName: wasmtime", 1)
		cp.apply(t, manifest)
	}
	waitFor(t, "both replicas ready", 180*time.Second, func() bool {
		return cp.jsonpath("deployment", "wasm-web", ".status.readyReplicas") == "2"
	})
	clusterIP := cp.jsonpath("service", "wasm-web", ".spec.clusterIP")
	if !strings.HasPrefix(clusterIP, "10.96.") {
		t.Fatalf("service ClusterIP %q", clusterIP)
	}
	out, _ := cp.run("get", "pods", "-l", "app=wasm-web", "-o", "jsonpath={.items[*].metadata.name}")
	pods := strings.Fields(out)
	if len(pods) != 2 {
		t.Fatalf("pods of the deployment: %q", out)
	}
	// kube-proxy spreads connections at random: each pod answers within a
	// few dozen.
	seen := map[string]bool{}
	client := newClient(2 * time.Second)
	waitFor(t, "the service reaching both pods", 60*time.Second, func() bool {
		body, err := httpGet(client, "http://"+clusterIP+"/")
		if err == nil {
			for _, p := range pods {
				if strings.TrimSpace(body) == "Hello from WebAssembly on "+p {
					seen[p] = true
				}
			}
		}
		return len(seen) == 2
	})
}
