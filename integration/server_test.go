package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/syncbuf"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	"github.com/wasmcri/wasmcri/internal/testweb"
)

// webContainerJSON is a webserver container; ports, when not "", is its
// io.kubernetes.container.ports annotation, as kubelet writes it.
func webContainerJSON(t *testing.T, name, image, ports string) string {
	cfg := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": image},
		"log_path": name + ".log",
	}
	if ports != "" {
		cfg["annotations"] = map[string]string{"io.kubernetes.container.ports": ports}
	}
	return writeJSON(t, name+"-ctr.json", cfg)
}

// httpGet fetches url and returns its body, or says why not.
func httpGet(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s", resp.Status)
	}
	return string(b), err
}

// newClient is an HTTP client making a new connection for each request.
func newClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
}

// waitServes polls url until its body starts with want.
func waitServes(t *testing.T, url, want string) {
	t.Helper()
	client := newClient(5 * time.Second)
	var body string
	var err error
	waitFor(t, url+" serving", 30*time.Second, func() bool {
		body, err = httpGet(client, url)
		return err == nil && strings.HasPrefix(body, want)
	})
}

// A Wasm web server in a pod, with real crictl: it serves on the pod's
// address (large bodies to 8 clients at once), through its host port and
// through crictl port-forward; two pods serve the same port on their own
// addresses; a stopped server stops answering and a new container serves
// again; after a kill -9 of the daemon the pod keeps its address and a new
// container serves on it; teardown leaves no namespace, link or lease.
func TestWasmServerWithCrictl(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	ref := reg + "/wasmcri/webserver:v1"
	pushWasm(t, testmodule.Webserver(t), ref, "oci")
	d.must("pull", ref)

	// crictl's way: the pod maps the port, its only container serves it.
	hostPort := freePort(t)
	podA := writeJSON(t, "web-a-pod.json", map[string]any{
		"metadata":      map[string]any{"name": "web-a", "namespace": "default", "uid": "web-a-uid"},
		"hostname":      "web-a",
		"log_directory": filepath.Join(t.TempDir(), "pods", "web-a"),
		"port_mappings": []map[string]any{{"container_port": 8080, "host_port": hostPort}},
	})
	a := strings.TrimSpace(d.must("runp", podA))
	srvA := strings.TrimSpace(d.must("create", a, webContainerJSON(t, "server", ref, ""), podA))
	d.must("start", srvA)
	// kubelet's way: the container's ports annotation.
	podB := writeJSON(t, "web-b-pod.json", map[string]any{
		"metadata": map[string]any{"name": "web-b", "namespace": "default", "uid": "web-b-uid"},
		"hostname": "web-b",
	})
	b := strings.TrimSpace(d.must("runp", podB))
	d.must("start", strings.TrimSpace(d.must("create", b, webContainerJSON(t, "server", ref, `[{"name":"http","containerPort":8080,"protocol":"TCP"}]`), podB)))

	ipA, _ := d.podNetwork(a)
	ipB, _ := d.podNetwork(b)
	urlA, urlB := "http://"+net.JoinHostPort(ipA, "8080"), "http://"+net.JoinHostPort(ipB, "8080")
	waitServes(t, urlA+"/", "Hello from WebAssembly on web-a")
	waitServes(t, urlB+"/", "Hello from WebAssembly on web-b")
	waitServes(t, "http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(hostPort))+"/", "Hello from WebAssembly on web-a")

	t.Run("large bodies to 8 clients at once", func(t *testing.T) {
		if err := testweb.Load(urlA, 8, 2, 16<<20); err != nil {
			t.Error(err)
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		local := freePort(t)
		ctx, cancel := context.WithCancel(context.Background())
		cmd := d.crictlCmd(ctx, "port-forward", a, fmt.Sprintf("%d:8080", local))
		stderr := &syncbuf.Buffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); cmd.Wait() }()
		waitServes(t, fmt.Sprintf("http://127.0.0.1:%d/healthz", local), "ok")
	})

	// Stopped, the server no longer answers; a new container serves again.
	d.must("stop", "--timeout", "10", srvA)
	client := newClient(5 * time.Second)
	if _, err := httpGet(client, urlA+"/"); err == nil {
		t.Fatal("a stopped server still answers")
	}
	d.must("start", strings.TrimSpace(d.must("create", a, webContainerJSON(t, "server-2", ref, `[{"containerPort":8080}]`), podA)))
	waitServes(t, urlA+"/healthz", "ok")

	// kill -9: the servers died with the daemon; the pods keep their
	// addresses and serve again from new containers.
	d.stop(syscall.SIGKILL)
	d.start()
	if ip, _ := d.podNetwork(a); ip != ipA {
		t.Fatalf("after kill -9 pod A has %q, had %q", ip, ipA)
	}
	d.must("start", strings.TrimSpace(d.must("create", a, webContainerJSON(t, "server-3", ref, `[{"containerPort":8080}]`), podA)))
	waitServes(t, urlA+"/", "Hello from WebAssembly on web-a")

	for _, id := range []string{a, b} {
		d.must("stopp", id)
		d.must("rmp", id)
	}
	d.stop(syscall.SIGTERM)
	if names, _ := os.ReadDir(filepath.Join(d.state, "netns")); len(names) != 0 {
		t.Fatalf("namespaces left: %v", names)
	}
	if leases, _ := filepath.Glob(filepath.Join(d.state, "cni", "wasmcri", "10.*")); len(leases) != 0 {
		t.Fatalf("leases left: %v", leases)
	}
	if ports, err := os.ReadDir(filepath.Join("/sys/class/net", d.bridge, "brif")); err != nil || len(ports) != 0 {
		t.Errorf("bridge %s after the pods went: ports %v, %v", d.bridge, ports, err)
	}
}
