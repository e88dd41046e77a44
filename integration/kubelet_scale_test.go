package integration

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/bench"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// TestKubelet200Pods runs 200 pods through a stock kubelet registered with
// an API server: all of them get Ready, kubelet and wasmcri both list them,
// kubelet's summary API has figures for each, and once they are deleted
// wasmcri is left with no sandbox. kubelet's log shows no runtime error at
// all until the delete, and none wasmcri caused after it (checkKubeletLog);
// every error line it has is logged, counted. Each pod is an idle module (sleeping in poll_oneoff), so the
// machine's work is kubelet's and wasmcri's, not the pods'. Timings are
// logged, not asserted.
func TestKubelet200Pods(t *testing.T) {
	const pods = 200
	reg := startRegistry(t)
	d := newDaemon(t)
	image := reg + "/wasmcri/sleeper:v1"
	pushWasm(t, testmodule.Wat(t, bench.TinySleepWAT), image, "oci")
	cp := startControlPlane(t)
	// kubelet's defaults but for the pod count (maxPods is 110) and image
	// pulls: the first pods all find the image missing and queue a pull
	// each, more than 5 a second (registryPullQPS), and kubelet fails the
	// pod over its limit with "pull QPS exceeded" and a back-off. The sync
	// period is a node's (the other tests' 5s would resync 40 pods a
	// second), the verbosity 2 (4 logs each pod's every sync).
	k := startKubeletWith(t, d, cp.kubeconfig, 2,
		"maxPods: 250",
		"registryPullQPS: 0",
		"syncFrequency: 1m",
	)
	waitFor(t, "node Ready", 120*time.Second, func() bool {
		return cp.jsonpath("node", k.node, `.status.conditions[?(@.type=="Ready")].status`) == "True"
	})
	runtimeClass, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "kubernetes", "runtimeclass.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cp.apply(t, string(runtimeClass))

	var list strings.Builder
	for i := range pods {
		fmt.Fprintf(&list, `---
apiVersion: v1
kind: Pod
metadata:
  name: scale-%03d
  labels: {app: scale}
spec:
  nodeName: %s
  runtimeClassName: wasmtime
  terminationGracePeriodSeconds: 5
  enableServiceLinks: false
  containers:
  - name: app
    image: %s
`, i, k.node, image)
	}
	created := time.Now()
	if _, err := cp.runWithInput([]byte(list.String()), "create", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d pods created in the API in %v", pods, time.Since(created))

	// Listing 200 pods costs kubectl and the API server some CPU: every 2s.
	ready, left := 0, pods
	defer func() {
		if t.Failed() {
			t.Logf("%d of %d pods were Ready; %d pods or sandboxes were left after the delete", ready, pods, left)
		}
	}()
	waitEvery(t, fmt.Sprintf("%d pods Ready", pods), 15*time.Minute, 2*time.Second, func() bool {
		ready = 0
		for _, p := range cp.scalePods(t) {
			if p.ready() {
				ready++
			}
		}
		return ready == pods
	})
	allReady := time.Since(created)
	t.Logf("all %d pods Ready %v after they were created", pods, allReady)
	logStartTimes(t, cp.scalePods(t))

	// kubelet's own view: its /pods endpoint. (The API server does not
	// proxy to a node on loopback.)
	kubeletURL := "https://127.0.0.1:" + cp.jsonpath("node", k.node, ".status.daemonEndpoints.kubeletEndpoint.Port")
	var onNode struct {
		Items []scalePod `json:"items"`
	}
	if err := json.Unmarshal(kubeletGet(t, kubeletURL+"/pods"), &onNode); err != nil {
		t.Fatal(err)
	}
	running := 0
	for _, p := range onNode.Items {
		if p.Metadata.Labels["app"] == "scale" && p.Status.Phase == "Running" {
			running++
		}
	}
	if running != pods {
		t.Errorf("kubelet's /pods lists %d running pods of %d", running, pods)
	}
	// wasmcri's view.
	if n := countLines(d.must("pods", "-q", "--state", "ready", "--label", "app=scale")); n != pods {
		t.Errorf("crictl pods: %d ready sandboxes, want %d", n, pods)
	}
	if n := countLines(d.must("ps", "-q", "--state", "running", "--label", "io.kubernetes.container.name=app")); n != pods {
		t.Errorf("crictl ps: %d running containers, want %d", n, pods)
	}
	// kubelet's summary API, from wasmcri's stats over CRI: its CPU and
	// memory part, as metrics-server asks for it (the whole summary wants
	// the node's root filesystem, which cadvisor finds on no test machine).
	took := time.Now()
	var summary struct {
		Pods []struct {
			PodRef     struct{ Name string } `json:"podRef"`
			Containers []struct {
				Name string `json:"name"`
				CPU  *struct {
					UsageCoreNanoSeconds *uint64 `json:"usageCoreNanoSeconds"`
				} `json:"cpu"`
			} `json:"containers"`
		} `json:"pods"`
	}
	if err := json.Unmarshal(kubeletGet(t, kubeletURL+"/stats/summary?only_cpu_and_memory=true"), &summary); err != nil {
		t.Fatal(err)
	}
	t.Logf("kubelet's stats summary of %d pods took %v", len(summary.Pods), time.Since(took))
	withStats := 0
	for _, p := range summary.Pods {
		if strings.HasPrefix(p.PodRef.Name, "scale-") && len(p.Containers) == 1 && p.Containers[0].CPU != nil && p.Containers[0].CPU.UsageCoreNanoSeconds != nil {
			withStats++
		}
	}
	if withStats != pods {
		t.Errorf("kubelet's stats summary has CPU figures for %d pods of %d", withStats, pods)
	}
	logKubeletMetrics(t, kubeletURL)

	// Up to here nothing was removed, so kubelet had no cause to ask after
	// a container or sandbox that is gone: not even NotFound is expected,
	// but for IDs this wasmcri never had (see foreignIDs).
	logSoFar := kubeletLog(t, k)
	if lines := runtimeErrorLines(logSoFar, foreignIDs(t, d)); len(lines) > 0 {
		t.Errorf("kubelet logged %d runtime errors while the pods started and ran, the first:\n%s", len(lines), strings.Join(lines[:min(len(lines), 5)], "\n"))
	}

	deleted := time.Now()
	cp.must(t, "delete", "pods", "-l", "app=scale", "--wait=false")
	waitEvery(t, "the pods gone from the API", 15*time.Minute, 2*time.Second, func() bool {
		left = len(cp.scalePods(t))
		return left == 0
	})
	t.Logf("all %d pods gone from the API %v after the delete", pods, time.Since(deleted))
	// kubelet removes the sandboxes of deleted pods in its container
	// garbage collection, once a minute.
	waitEvery(t, "wasmcri left with no sandbox", 5*time.Minute, 2*time.Second, func() bool {
		left = countLines(d.must("pods", "-q"))
		return left == 0
	})
	t.Logf("wasmcri had no sandbox left %v after the delete", time.Since(deleted))
	if n := countLines(d.must("ps", "-a", "-q")); n != 0 {
		t.Errorf("wasmcri still has %d containers", n)
	}
	logKubeletMetrics(t, kubeletURL)
	logRuntimeCallTimes(t, d)
	logKubeletErrors(t, "while the pods started and ran", logSoFar)
	logKubeletErrors(t, "from their deletion on", strings.TrimPrefix(kubeletLog(t, k), logSoFar))
	// Runtime calls slow enough to hold up PLEG's relist for its 3 minutes
	// would show here.
	if strings.Contains(kubeletLog(t, k), "pleg was last seen active") {
		t.Errorf("kubelet found PLEG unhealthy: a relist took minutes")
	}
	checkKubeletLog(t, k, nil)
}

// scalePod is what the test reads of a pod.
type scalePod struct {
	Metadata struct {
		Name              string            `json:"name"`
		CreationTimestamp time.Time         `json:"creationTimestamp"`
		Labels            map[string]string `json:"labels"`
	} `json:"metadata"`
	Status struct {
		Phase      string `json:"phase"`
		Conditions []struct {
			Type               string    `json:"type"`
			Status             string    `json:"status"`
			LastTransitionTime time.Time `json:"lastTransitionTime"`
		} `json:"conditions"`
	} `json:"status"`
}

// readySince is when the pod became Ready, zero while it is not.
func (p scalePod) readySince() time.Time {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" && c.Status == "True" {
			return c.LastTransitionTime
		}
	}
	return time.Time{}
}

func (p scalePod) ready() bool { return !p.readySince().IsZero() }

// scalePods lists the test's pods in the API.
func (cp *controlPlane) scalePods(t *testing.T) []scalePod {
	t.Helper()
	var out struct {
		Items []scalePod `json:"items"`
	}
	if err := json.Unmarshal([]byte(cp.must(t, "get", "pods", "-l", "app=scale", "-o", "json")), &out); err != nil {
		t.Fatal(err)
	}
	return out.Items
}

func countLines(s string) int { return len(strings.Fields(s)) }

// kubeletGet reads one of kubelet's endpoints, which the test's kubelet
// serves to anyone (on loopback, with a certificate of its own).
func kubeletGet(t *testing.T, url string) []byte {
	t.Helper()
	c := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v: %.300s", url, resp.Status, err, b)
	}
	return b
}

// logStartTimes logs how long the pods took from creation to Ready (to the
// second, as the API keeps times).
func logStartTimes(t *testing.T, pods []scalePod) {
	t.Helper()
	var d []time.Duration
	for _, p := range pods {
		if r := p.readySince(); !r.IsZero() {
			d = append(d, r.Sub(p.Metadata.CreationTimestamp))
		}
	}
	if len(d) == 0 {
		return
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	t.Logf("creation to Ready over %d pods: min %v, median %v, 90th %v, max %v", len(d), d[0], d[len(d)/2], d[len(d)*9/10], d[len(d)-1])
}

// logKubeletMetrics logs what kubelet's metrics say of the runtime: how
// long its CRI calls and PLEG relists took, and its CRI errors.
func logKubeletMetrics(t *testing.T, kubeletURL string) {
	t.Helper()
	out := string(kubeletGet(t, kubeletURL+"/metrics"))
	sums, counts := map[string]float64{}, map[string]float64{}
	var errs []string
	metric := regexp.MustCompile(`^(kubelet_runtime_operations_duration_seconds|kubelet_pleg_relist_duration_seconds)_(sum|count)(\{operation_type="([^"]+)"\})? ([0-9.e+-]+)$`)
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "kubelet_runtime_operations_errors_total{") {
			errs = append(errs, line)
		}
		m := metric.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var v float64
		fmt.Sscan(m[5], &v)
		name := strings.TrimPrefix(strings.TrimPrefix(m[1], "kubelet_runtime_operations_duration_seconds"), "kubelet_")
		if m[4] != "" {
			name = m[4]
		}
		if m[2] == "sum" {
			sums[name] = v
		} else {
			counts[name] = v
		}
	}
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(counts)) {
		if counts[name] > 0 {
			fmt.Fprintf(&b, "\n  %-32s %6.0f calls, mean %v", name, counts[name], time.Duration(sums[name]/counts[name]*float64(time.Second)).Round(10*time.Microsecond))
		}
	}
	t.Logf("kubelet's CRI calls and PLEG relists so far:%s", b.String())
	if len(errs) > 0 {
		t.Logf("kubelet's CRI errors so far:\n  %s", strings.Join(errs, "\n  "))
	}
}

// logRuntimeCallTimes logs how long wasmcri took to answer each kind of
// CRI call, from its debug log: next to what kubelet measured, what of
// that was the runtime's and what the way there and back.
func logRuntimeCallTimes(t *testing.T, d *daemon) {
	t.Helper()
	b, err := os.ReadFile(d.cmdLog)
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string][]time.Duration{}
	for _, m := range regexp.MustCompile(`msg="CRI call(?: failed)?" method=/runtime\.v1\.\w+/(\w+) .*?duration=(\S+)`).FindAllSubmatch(b, -1) {
		if dur, err := time.ParseDuration(string(m[2])); err == nil {
			calls[string(m[1])] = append(calls[string(m[1])], dur)
		}
	}
	var out strings.Builder
	for _, m := range slices.Sorted(maps.Keys(calls)) {
		ds := calls[m]
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		fmt.Fprintf(&out, "\n  %-22s %6d calls, median %v, 99th %v, max %v", m, len(ds), ds[len(ds)/2], ds[len(ds)*99/100], ds[len(ds)-1])
	}
	t.Logf("wasmcri's time on each CRI call:%s", out.String())
}

// kubeletLog is kubelet's log so far.
func kubeletLog(t *testing.T, k *kubelet) string {
	t.Helper()
	b, err := os.ReadFile(k.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// runtimeErrorLines are the lines of log with an error from the runtime,
// but for NotFound of an ID foreign says this runtime never had.
func runtimeErrorLines(log string, foreign func(id string) bool) []string {
	id := regexp.MustCompile(`[0-9a-f]{64}`)
	var lines []string
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "rpc error") {
			continue
		}
		if strings.Contains(line, "code = NotFound") && foreign(id.FindString(line)) {
			continue
		}
		lines = append(lines, line)
	}
	return lines
}

// foreignIDs says whether this daemon never had a container or sandbox of
// an ID. kubelet's garbage collection asks after the container of every
// dead symlink in /var/log/containers, a directory of the host's that any
// kubelet run here (another test's, another checkout's) leaves links in,
// and the runtime rightly answers NotFound.
func foreignIDs(t *testing.T, d *daemon) func(id string) bool {
	t.Helper()
	b, err := os.ReadFile(d.cmdLog)
	if err != nil {
		t.Fatal(err)
	}
	had := map[string]bool{}
	for _, m := range regexp.MustCompile(`msg="(?:container created|sandbox ready)" (?:container|sandbox)=([0-9a-f]{64})`).FindAllSubmatch(b, -1) {
		had[string(m[1])] = true
	}
	return func(id string) bool { return id != "" && !had[id] }
}

// logKubeletErrors logs the error lines (klog's E) of part of kubelet's
// log, counted by message: what checkKubeletLog lets pass shows here too.
func logKubeletErrors(t *testing.T, when, log string) {
	t.Helper()
	counts := map[string]int{}
	header := regexp.MustCompile(`^E\d{4} \S+\s+\d+ \S+\] `)
	ids := regexp.MustCompile(`[0-9a-f]{64}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|scale-\d{3}`)
	for _, line := range strings.Split(log, "\n") {
		if !header.MatchString(line) {
			continue
		}
		msg := ids.ReplaceAllString(header.ReplaceAllString(line, ""), "…")
		counts[msg]++
	}
	var msgs []string
	for msg := range counts {
		msgs = append(msgs, msg)
	}
	sort.Slice(msgs, func(i, j int) bool { return counts[msgs[i]] > counts[msgs[j]] })
	var out strings.Builder
	for _, msg := range msgs {
		fmt.Fprintf(&out, "\n  %5d× %.300s", counts[msg], msg)
	}
	t.Logf("%s, kubelet logged %d kinds of error line:%s", when, len(msgs), out.String())
}
