package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/wasmcri/wasmcri/bench"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// serverPort is where the example server listens in every row.
const serverPort = "8080"

// serverLoad is one load run against a server: requests per second and
// each request's latency.
type serverLoad struct {
	perSecond float64
	latency   sample
}

// loadServer sends GETs of url from conns keep-alive connections for
// window, one request in flight on each.
func loadServer(url string, conns int, window time.Duration) (serverLoad, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	// One request first, outside the timing: the connection and the
	// server's first-use costs.
	if err := getDiscard(client, url); err != nil {
		return serverLoad{}, err
	}
	var mu sync.Mutex
	var all sample
	var firstErr error
	stop := time.Now().Add(window)
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine sample
			for time.Now().Before(stop) {
				t := time.Now()
				if err := getDiscard(client, url); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if firstErr != nil {
		return serverLoad{}, firstErr
	}
	return serverLoad{perSecond: float64(len(all)) / took.Seconds(), latency: all}, nil
}

func getDiscard(client *http.Client, url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return err
}

// waitHTTP polls url until it answers.
func waitHTTP(url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return waitFor(url, 30*time.Second, func() bool { return getDiscard(client, url) == nil })
}

// servers measures examples/webserver in a Wasm pod, through the pod's
// address, against the same server built natively: on the node's
// loopback, and inside the very pod's network namespace (through the
// same address and bridge as the Wasm one).
func (s *suite) servers(ctx context.Context) error {
	fmt.Println("building examples/webserver for wasip1 and natively")
	module, err := buildModule(ctx, s.dir, "examples/webserver")
	if err != nil {
		return err
	}
	native := filepath.Join(s.dir, "webserver-native")
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", native, "./examples/webserver").CombinedOutput(); err != nil {
		return fmt.Errorf("build examples/webserver: %v: %s", err, b)
	}
	ref, err := s.image("webserver", module)
	if err != nil {
		return err
	}

	pod, err := s.client.RunPod(ctx, bench.PodOptions{Image: ref, LogDirectory: s.logs,
		Annotations: map[string]string{"io.kubernetes.container.ports": `[{"name":"http","containerPort":` + serverPort + `}]`}})
	if err != nil {
		return err
	}
	defer s.client.RemovePod(ctx, pod.SandboxID)
	st, err := s.client.RT.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod.SandboxID, Verbose: true})
	if err != nil {
		return err
	}
	// The namespace is in the record the verbose status shows.
	var record struct {
		NetNS string `json:"netns"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &record); err != nil || record.NetNS == "" {
		return fmt.Errorf("the server pod's namespace: %q, %v", st.GetInfo()["info"], err)
	}
	podIP := st.GetStatus().GetNetwork().GetIp()
	if podIP == "" {
		return fmt.Errorf("the server pod has no address")
	}
	wasmURL := "http://" + net.JoinHostPort(podIP, serverPort)

	// The native server beside it in the pod's namespace listens on
	// another port; the one on the node's loopback on a free one.
	inPod, err := startProc(filepath.Join(s.dir, "native-in-pod.log"), "nsenter", "--net="+record.NetNS, native, "-addr", ":8081")
	if err != nil {
		return err
	}
	defer inPod.stop()
	local := fmt.Sprintf("127.0.0.1:%d", freePort())
	onNode, err := startProc(filepath.Join(s.dir, "native-on-node.log"), native, "-addr", local)
	if err != nil {
		return err
	}
	defer onNode.stop()

	rows := []struct{ name, url string }{
		{"Wasm, in a pod, through the pod's address", wasmURL},
		{"native, in the same pod's network namespace, through the pod's address", "http://" + net.JoinHostPort(podIP, "8081")},
		{"native, on the node's loopback", "http://" + local},
	}
	for _, r := range rows {
		if err := waitHTTP(r.url + "/healthz"); err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
	}
	window := time.Duration(float64(3*time.Second) * *scale)
	window = max(window, time.Second)
	t := table{head: []string{"request", "connections", "Wasm in a pod: req/s", "p50 ms", "p99 ms", "native in the pod's namespace: req/s", "p50 ms", "p99 ms", "native on loopback: req/s", "Wasm/native (pod)"}}
	for _, req := range []string{"/", "/bytes/65536"} {
		for _, conns := range []int{1, 8} {
			cells := []string{"GET " + req, fmt.Sprint(conns)}
			var got []serverLoad
			for _, r := range rows {
				res, err := loadServer(r.url+req, conns, window)
				if err != nil {
					return fmt.Errorf("%s: %w", r.name, err)
				}
				got = append(got, res)
			}
			for _, res := range got[:2] {
				cells = append(cells, fmt.Sprintf("%.0f", res.perSecond), ms(res.latency.p50()), ms(res.latency.p99()))
			}
			cells = append(cells, fmt.Sprintf("%.0f", got[2].perSecond), fmt.Sprintf("%.2f", got[0].perSecond/got[1].perSecond))
			t.add(cells...)
		}
	}
	s.section("Serving: examples/webserver in a Wasm pod against the same server built natively",
		t.String()+fmt.Sprintf("\nEach row: GET requests for %v from the given number of keep-alive connections, one request in flight on each, made by this driver on the same two cores as the server. "+
			"The Wasm server is the pod's container: its listener was bound by wasmcri in the pod's network namespace and handed to it at fd 3; accept, reads, writes and waits go through wasmcri's socket calls (wasm/sockets.go). "+
			"The native columns run the same program built for linux/amd64: inside the Wasm pod's own network namespace (entered with nsenter, on another port), reached over the same bridge, and on the node's loopback. "+
			"Go on wasip1 runs one thread with no preemption across cores, so the Wasm server uses one core at most while the native one uses both.\n", window))
	return nil
}

// buildModule builds the Go program in dir for wasip1.
func buildModule(ctx context.Context, work, dir string) ([]byte, error) {
	out := filepath.Join(work, filepath.Base(dir)+".wasm")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build %s: %v: %s", dir, err, b)
	}
	return os.ReadFile(out)
}
