package sandbox

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// webConfig is a webserver container that declares its ports as kubelet
// does.
func webConfig(name, img, ports string) *runtimeapi.ContainerConfig {
	cfg := ctrConfig(name, img)
	cfg.Labels = map[string]string{kubeletContainerLabel: name}
	cfg.Annotations = map[string]string{portsAnnotation: ports}
	return cfg
}

// fetch GETs url, or says why not.
func fetch(url string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// waitServing polls url until it answers with a body starting with want.
func waitServing(t *testing.T, url, want string) {
	t.Helper()
	var last string
	var lastErr error
	deadline := time.Now().Add(30 * time.Second)
	for {
		last, lastErr = fetch(url)
		if lastErr == nil && strings.HasPrefix(last, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %q: %q, %v", url, want, last, lastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Containers serve on the TCP ports they declare, on their pod's address:
// two pods on one port, each its own; a second container of a pod on its
// sibling's port fails to start, saying why; exec gets no listeners; a
// stopped server's port is bound again by its successor.
func TestContainersServeOnTheirPorts(t *testing.T) {
	o := testNetwork(t)
	e := newEnv(t)
	m := e.managerWith(Options{Network: &o})
	ctx := context.Background()
	img := e.image("web", testmodule.Webserver(t))
	ports := `[{"name":"http","containerPort":8080,"protocol":"TCP"},{"name":"dns","containerPort":53,"protocol":"UDP"}]`

	var pods []Sandbox
	var servers []Container
	for _, name := range []string{"web-a", "web-b"} {
		sb, err := m.RunSandbox(ctx, podConfig(name, e.dir), "")
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, sb)
		servers = append(servers, e.startIn(m, sb, webConfig("server", img, ports)))
	}
	if pods[0].IPs[0] == pods[1].IPs[0] {
		t.Fatalf("two pods share the address %s", pods[0].IPs[0])
	}
	for _, sb := range pods {
		waitServing(t, "http://"+net.JoinHostPort(sb.IPs[0], "8080")+"/", "Hello from WebAssembly on "+sb.Config.Metadata.Name)
	}

	// The UDP port got no listener: one socket, named as declared.
	code, stdout, stderr, err := m.ExecSync(ctx, servers[0].ID, []string{"/web.wasm"}, 20, 1<<20)
	if err != nil || code == 0 || !strings.Contains(string(stderr), "LISTEN_FDS is not set") {
		t.Fatalf("exec of the server: exit %d, %v, stdout %q stderr %q: want it to find no listeners", code, err, stdout, stderr)
	}

	twin, err := m.CreateContainer(ctx, pods[0].ID, webConfig("twin", img, `[{"containerPort":8080}]`))
	if err != nil {
		t.Fatal(err)
	}
	err = m.StartContainer(ctx, twin.ID)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "port 8080") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("second server on port 8080 of one pod: %v", err)
	}

	// Stopped: the port is free for the next container, which serves.
	if err := m.StopContainer(servers[0].ID, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch("http://" + net.JoinHostPort(pods[0].IPs[0], "8080") + "/"); err == nil {
		t.Fatal("a stopped server still answers")
	}
	e.startIn(m, pods[0], webConfig("server2", img, `[{"containerPort":8080}]`))
	waitServing(t, "http://"+net.JoinHostPort(pods[0].IPs[0], "8080")+"/healthz", "ok")
}

// startIn creates and starts a container from cfg in sb, on m.
func (e *env) startIn(m *Manager, sb Sandbox, cfg *runtimeapi.ContainerConfig) Container {
	e.t.Helper()
	c, err := m.CreateContainer(context.Background(), sb.ID, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := m.StartContainer(context.Background(), c.ID); err != nil {
		e.t.Fatal(err)
	}
	return c
}

func TestContainerPorts(t *testing.T) {
	pod := &runtimeapi.PodSandboxConfig{PortMappings: []*runtimeapi.PortMapping{
		{ContainerPort: 80, HostPort: 8080}, {ContainerPort: 53, Protocol: runtimeapi.Protocol_UDP}, {ContainerPort: 80}}}
	annotated := func(v string) *runtimeapi.ContainerConfig {
		return &runtimeapi.ContainerConfig{Annotations: map[string]string{portsAnnotation: v}}
	}
	kubelets := &runtimeapi.ContainerConfig{Labels: map[string]string{kubeletContainerLabel: "app"}}
	for _, c := range []struct {
		name string
		cfg  *runtimeapi.ContainerConfig
		only bool
		want string // "port/name ..." or "invalid: <text>"
	}{
		{"annotation", annotated(`[{"name":"http","containerPort":8080,"protocol":"TCP"},{"containerPort":9090},{"containerPort":53,"protocol":"UDP"},{"containerPort":8080}]`), true, "8080/http 9090/9090"},
		{"annotation, not the only container", annotated(`[{"containerPort":8080}]`), false, "8080/8080"},
		{"crictl's only container: the pod's TCP mappings", &runtimeapi.ContainerConfig{}, true, "80/80"},
		{"crictl's second container", &runtimeapi.ContainerConfig{}, false, ""},
		{"kubelet's container without ports", kubelets, true, ""},
		{"not JSON", annotated(`[{"containerPort":`), true, "invalid: is not a JSON list"},
		{"port 0", annotated(`[{"containerPort":0}]`), true, "invalid: containerPort 0 is not in 1-65535"},
		{"port 70000", annotated(`[{"containerPort":70000}]`), true, "invalid: containerPort 70000"},
		{"name with a colon", annotated(`[{"name":"a:b","containerPort":80}]`), true, "invalid: name \"a:b\""},
		{"huge", annotated(strings.Repeat(" ", maxPortsAnnotation+1)), true, "invalid: at most 65536"},
		{"too many", annotated("[" + manyPorts(65) + "]"), true, "invalid: declares 65 TCP ports"},
	} {
		ports, err := containerPorts(c.cfg, pod, func() bool { return c.only })
		var got string
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%s: %v is not InvalidArgument", c.name, err)
			}
			if !strings.Contains(err.Error(), portsAnnotation) && !strings.Contains(err.Error(), "declares") {
				t.Errorf("%s: %v does not name the field", c.name, err)
			}
			got = "invalid: " + err.Error()
		} else {
			var parts []string
			for _, p := range ports {
				parts = append(parts, strconv.Itoa(int(p.Number))+"/"+p.Name)
			}
			got = strings.Join(parts, " ")
		}
		if strings.HasPrefix(c.want, "invalid: ") {
			if !strings.HasPrefix(got, "invalid: ") || !strings.Contains(got, strings.TrimPrefix(c.want, "invalid: ")) {
				t.Errorf("%s: got %q, want %q", c.name, got, c.want)
			}
		} else if got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

func manyPorts(n int) string {
	var parts []string
	for k := 1; k <= n; k++ {
		parts = append(parts, `{"containerPort":`+strconv.Itoa(k)+`}`)
	}
	return strings.Join(parts, ",")
}

// Any annotation is a list of ports or InvalidArgument; the ports are
// TCP ports with usable names, no more than a module can be handed.
func FuzzContainerPorts(f *testing.F) {
	f.Add(`[{"name":"http","containerPort":8080,"protocol":"TCP"},{"containerPort":53,"protocol":"UDP"}]`)
	f.Add(`[{"containerPort":0}]`)
	f.Add(`[{"name":"a:b","containerPort":1}]`)
	f.Add(`{}`)
	f.Fuzz(func(t *testing.T, annotation string) {
		cfg := &runtimeapi.ContainerConfig{Annotations: map[string]string{portsAnnotation: annotation}}
		ports, err := containerPorts(cfg, &runtimeapi.PodSandboxConfig{}, func() bool { return true })
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("%v is not InvalidArgument", err)
			}
			return
		}
		if len(ports) > 64 {
			t.Fatalf("%d ports", len(ports))
		}
		seen := map[int32]bool{}
		for _, p := range ports {
			if p.Number < 1 || p.Number > 65535 || seen[p.Number] || p.Name == "" || strings.ContainsAny(p.Name, ":\x00\n") {
				t.Fatalf("port %+v of %q", p, annotation)
			}
			seen[p.Number] = true
		}
	})
}
