package integration

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/wasmcri/wasmcri/internal/netns"
	"github.com/wasmcri/wasmcri/internal/testcni"
)

// podNetwork is a pod's address (crictl inspectp's status.network) and
// its namespace (the record in its verbose info).
func (d *daemon) podNetwork(id string) (ip string, netnsPath string) {
	d.t.Helper()
	var out struct {
		Info struct {
			NetNS string `json:"netns"`
		} `json:"info"`
		Status struct {
			Network *struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(d.must("inspectp", id)), &out); err != nil {
		d.t.Fatal(err)
	}
	if out.Status.Network != nil {
		ip = out.Status.Network.IP
	}
	return ip, out.Info.NetNS
}

// serveIn listens inside the network namespace at path and answers each
// connection with msg; the address is the pod's ip and the port chosen.
func serveIn(t *testing.T, path, ip, msg string) string {
	t.Helper()
	var l net.Listener
	if err := netns.Do(path, func() (err error) { l, err = net.Listen("tcp", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go testcni.Answer(l, msg)
	return net.JoinHostPort(ip, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
}

func dialRead(addr string) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	return string(b), err
}

// With real crictl: every pod not on the node's network gets a namespace
// and an address of its own on the daemon's built-in network, reachable
// from the node, and its host ports on the node's loopback; the address survives a kill -9 of the daemon; stopping the
// pod frees it, and once the pods are removed and the daemon stopped no
// namespace, link or lease is left.
func TestPodNetworkWithCrictl(t *testing.T) {
	d := newDaemon(t)
	var info struct {
		Status struct {
			Conditions []struct {
				Type   string `json:"type"`
				Status bool   `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(d.must("info")), &info); err != nil {
		t.Fatal(err)
	}
	for _, c := range info.Status.Conditions {
		if c.Type == "NetworkReady" && !c.Status {
			t.Fatalf("NetworkReady is false:\n%s", d.must("info"))
		}
	}

	a := strings.TrimSpace(d.must("runp", podJSON(t, "net-a")))
	b := strings.TrimSpace(d.must("runp", podJSON(t, "net-b")))
	ipA, nsA := d.podNetwork(a)
	ipB, _ := d.podNetwork(b)
	if net.ParseIP(ipA) == nil || net.ParseIP(ipB) == nil || ipA == ipB || !strings.HasPrefix(ipA, "10.253.") {
		t.Fatalf("pod addresses %q and %q", ipA, ipB)
	}
	if filepath.Dir(nsA) != filepath.Join(d.state, "netns") || !netns.IsPinned(nsA) {
		t.Fatalf("pod A's namespace %q is not pinned in the state directory", nsA)
	}
	host := writeJSON(t, "host-pod.json", map[string]any{
		"metadata": map[string]any{"name": "net-host", "namespace": "default", "uid": "net-host-uid"},
		"linux":    map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
	})
	h := strings.TrimSpace(d.must("runp", host))
	if ip, ns := d.podNetwork(h); ip != "" || ns != "" {
		t.Fatalf("a host-network pod got %q, namespace %q", ip, ns)
	}

	addr := serveIn(t, nsA, ipA, "pod A")
	if got, err := dialRead(addr); err != nil || got != "pod A" {
		t.Fatalf("pod A from the node: %q, %v", got, err)
	}

	// A host port reaches its pod's container port (portmap), from the
	// node's loopback; stopping the pod takes it away.
	hostPort := freePort(t)
	ports := strings.TrimSpace(d.must("runp", writeJSON(t, "ports-pod.json", map[string]any{
		"metadata":      map[string]any{"name": "net-ports", "namespace": "default", "uid": "net-ports-uid"},
		"port_mappings": []map[string]any{{"container_port": 8080, "host_port": hostPort}},
	})))
	_, nsP := d.podNetwork(ports)
	var l net.Listener
	if err := netns.Do(nsP, func() (err error) { l, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go testcni.Answer(l, "through the host port")
	hostAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(hostPort))
	if got, err := dialRead(hostAddr); err != nil || got != "through the host port" {
		t.Fatalf("host port %d: %q, %v", hostPort, got, err)
	}
	d.must("stopp", ports)
	if got, _ := dialRead(hostAddr); got == "through the host port" {
		t.Fatalf("host port %d still reaches the stopped pod", hostPort)
	}
	d.must("rmp", ports)

	d.stop(syscall.SIGKILL)
	d.start()
	if ip, _ := d.podNetwork(a); ip != ipA {
		t.Fatalf("after kill -9 pod A has %q, had %q", ip, ipA)
	}
	if got, err := dialRead(addr); err != nil || got != "pod A" {
		t.Fatalf("pod A after kill -9 of the daemon: %q, %v", got, err)
	}

	d.must("stopp", a)
	if ip, _ := d.podNetwork(a); ip != "" {
		t.Fatalf("a stopped pod still reports %s", ip)
	}
	if _, err := os.Stat(filepath.Join(d.state, "cni", "wasmcri", ipA)); !os.IsNotExist(err) {
		t.Fatalf("pod A's lease after stopp: %v", err)
	}
	for _, id := range []string{a, b, h} {
		d.must("stopp", id)
		d.must("rmp", id)
	}
	// What is left is the pool, attached ahead of need, which a clean stop
	// releases.
	d.stop(syscall.SIGTERM)
	if names, _ := os.ReadDir(filepath.Join(d.state, "netns")); len(names) != 0 {
		t.Fatalf("namespaces left: %v", names)
	}
	leases, _ := filepath.Glob(filepath.Join(d.state, "cni", "wasmcri", "10.*"))
	if len(leases) != 0 {
		t.Fatalf("leases left: %v", leases)
	}
	// The pods' links went with their namespaces: the bridge has no port.
	if ports, err := os.ReadDir(filepath.Join("/sys/class/net", d.bridge, "brif")); err != nil || len(ports) != 0 {
		t.Errorf("bridge %s after the pods went: ports %v, %v", d.bridge, ports, err)
	}
}
