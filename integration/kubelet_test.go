package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/crilog/crilogtest"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// staticPod is a pod manifest running the hello image with args.
func staticPod(name, image, restartPolicy, extra string, args ...string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
spec:
  restartPolicy: %s
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: %s
    args: [%s]
%s`, name, restartPolicy, image, strings.Join(quoted, ", "), extra)
}

func livenessProbe(exitCode int) string {
	return fmt.Sprintf(`    livenessProbe:
      exec:
        command: ["probe", "exit", "%d"]
      periodSeconds: 1
      failureThreshold: 2
      timeoutSeconds: 5
`, exitCode)
}

// A stock kubelet with static pods of Wasm images: the pod runs and logs
// into kubelet's pod log dir; a crashing module is restarted with back-off;
// a failing exec liveness probe restarts its container, a passing one
// never does; removing the manifest stops and cleans the pod.
func TestKubeletStaticPods(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	image := reg + "/wasmcri/hello:v1"
	pushWasm(t, testmodule.Hello(t), image, "oci")
	k := startKubelet(t, d, "")

	// The steady pod's grace period is long: its stop, below, is measured
	// against it.
	const steadyGrace = 60 * time.Second
	steady := k.writeManifest(t, "steady", strings.Replace(staticPod("steady", image, "Always", livenessProbe(0), "sleep-forever"),
		"terminationGracePeriodSeconds: 5", fmt.Sprintf("terminationGracePeriodSeconds: %d", int(steadyGrace/time.Second)), 1))
	k.writeManifest(t, "crasher", staticPod("crasher", image, "Always", "", "exit", "1"))
	k.writeManifest(t, "probed", staticPod("probed", image, "Always", livenessProbe(1), "sleep-forever"))

	// The static pod's name gets the node name appended.
	steadyPod, crasherPod, probedPod := "steady-"+k.node, "crasher-"+k.node, "probed-"+k.node
	waitFor(t, "steady pod running", 90*time.Second, func() bool {
		cs := d.containersOf(steadyPod)
		return len(cs) > 0 && cs[0].State == "CONTAINER_RUNNING"
	})
	logs, _ := filepath.Glob(filepath.Join(k.podLogs, "default_"+steadyPod+"_*", "app", "0.log"))
	if len(logs) != 1 {
		t.Fatalf("no log for the steady pod under %s", k.podLogs)
	}
	crilogtest.WaitFor(t, logs[0], "stdout", "tick 3")

	// restartPolicy Always: the crashing module comes back, after a back-off
	// that grows. kubelet removes dead containers as it goes, so each
	// attempt's times are noted while it can be seen.
	started, finished := map[int]time.Time{}, map[int]time.Time{}
	waitFor(t, "crasher restarted three times", 180*time.Second, func() bool {
		for _, c := range d.containersOf(crasherPod) {
			out, err := d.run("inspect", c.ID)
			if err != nil {
				continue
			}
			var st struct {
				Status struct {
					StartedAt, FinishedAt string
					ExitCode              int
				} `json:"status"`
			}
			json.Unmarshal([]byte(out), &st)
			if ts, err := time.Parse(time.RFC3339Nano, st.Status.StartedAt); err == nil && ts.Year() > 1970 {
				started[c.Metadata.Attempt] = ts
			}
			if ts, err := time.Parse(time.RFC3339Nano, st.Status.FinishedAt); err == nil && ts.Year() > 1970 {
				finished[c.Metadata.Attempt] = ts
				if st.Status.ExitCode != 1 {
					t.Errorf("crasher attempt %d exit code %d", c.Metadata.Attempt, st.Status.ExitCode)
				}
			}
		}
		return !started[3].IsZero() && !finished[1].IsZero() && !finished[2].IsZero()
	})
	gap1, gap2 := started[2].Sub(finished[1]), started[3].Sub(finished[2])
	t.Logf("crash back-off: %v, then %v", gap1, gap2)
	if gap1 < 500*time.Millisecond || gap2 < gap1 {
		t.Errorf("restarts after crashes came %v then %v after the exits: no growing back-off", gap1, gap2)
	}

	// A failing exec liveness probe restarts the container.
	waitFor(t, "probed container restarted", 90*time.Second, func() bool {
		cs := d.containersOf(probedPod)
		return len(cs) > 0 && cs[0].Metadata.Attempt >= 1
	})
	for _, c := range d.containersOf(probedPod) {
		if c.Metadata.Attempt == 0 {
			if st := d.inspect(c.ID); st["exitCode"] != float64(137) {
				t.Errorf("container killed by its liveness probe: exit %v", st["exitCode"])
			}
		}
	}
	// The passing probe has left the steady pod alone all this while.
	if cs := d.containersOf(steadyPod); len(cs) != 1 || cs[0].Metadata.Attempt != 0 || cs[0].State != "CONTAINER_RUNNING" {
		t.Errorf("steady pod with a passing probe: %+v", cs)
	}

	// Removing the manifest stops the pod at once: a Wasm module has no
	// graceful phase, so kubelet does not wait out the grace period. That
	// period, not a wall-clock figure, bounds it.
	steadyID := d.containersOf(steadyPod)[0].ID
	if err := os.Remove(steady); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	waitFor(t, "steady pod stopped", steadyGrace+30*time.Second, func() bool {
		out, err := d.run("inspect", steadyID)
		return err != nil || strings.Contains(out, "CONTAINER_EXITED")
	})
	took := time.Since(removed)
	t.Logf("the removed pod stopped %v after its manifest went (grace period %v)", took, steadyGrace)
	if took >= steadyGrace/2 {
		t.Errorf("stopping the removed pod took %v of its %v grace period", took, steadyGrace)
	}
	waitFor(t, "steady pod's sandbox stopped", 30*time.Second, func() bool {
		out := d.must("pods", "--label", "io.kubernetes.pod.name="+steadyPod, "-o", "json")
		return !strings.Contains(out, `"SANDBOX_READY"`)
	})
	checkKubeletLog(t, k, nil)
}

// checkKubeletLog fails on errors from the runtime in kubelet's log, except
// those the test provoked on purpose.
func checkKubeletLog(t *testing.T, k *kubelet, expected []*regexp.Regexp) {
	t.Helper()
	b, err := os.ReadFile(k.log)
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		// kubelet asks for the features of the handler each pod names,
		// "" for most; one it does not find is logged with each sync.
		if !strings.Contains(line, "rpc error") && !strings.Contains(line, "Unimplemented") && !strings.Contains(line, "Unknown runtime handler") {
			continue
		}
		ok := false
		for _, re := range expected {
			if re.MatchString(line) {
				ok = true
				break
			}
		}
		// kubelet asks after containers and sandboxes it has just removed.
		if strings.Contains(line, "code = NotFound") {
			ok = true
		}
		if !ok {
			msg := regexp.MustCompile(`^\S+ \S+\s+\d+ `).ReplaceAllString(line, "")
			bad[msg]++
		}
	}
	for msg, n := range bad {
		t.Errorf("kubelet logged a runtime error %d times: %.400s", n, msg)
	}
}

// A kubelet registered with a real API server: the node is Ready and lists
// our runtime handler; a RuntimeClass selects wasmcri; kubectl logs and
// exec work; configMap, secret and emptyDir volumes reach the module; the
// termination message reaches pod status; a pod naming no RuntimeClass
// runs on the default handler; the node reports a semantic runtime
// version; an unknown handler fails its pod with a clear event and nothing
// else.
func TestKubeletWithAPIServer(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	image := reg + "/wasmcri/hello:v1"
	pushWasm(t, testmodule.Hello(t), image, "oci")
	webImage := reg + "/wasmcri/webserver:v1"
	pushWasm(t, testmodule.Webserver(t), webImage, "oci")
	cp := startControlPlane(t)
	k := startKubelet(t, d, cp.kubeconfig)

	waitFor(t, "node Ready", 120*time.Second, func() bool {
		return cp.jsonpath("node", k.node, `.status.conditions[?(@.type=="Ready")].status`) == "True"
	})
	if handlers := cp.jsonpath("node", k.node, ".status.runtimeHandlers[*].name"); !strings.Contains(handlers, "wasmtime") {
		t.Errorf("node.status.runtimeHandlers = %q", handlers)
	}
	// kubelet shows a runtime version it cannot parse as "Unknown".
	if v := cp.jsonpath("node", k.node, ".status.nodeInfo.containerRuntimeVersion"); !regexp.MustCompile(`^wasmcri://[0-9]+\.[0-9]+\.[0-9]+([-+].*)?$`).MatchString(v) {
		t.Errorf("node.status.nodeInfo.containerRuntimeVersion = %q (built as %q)", v, buildVersion)
	}

	// The RuntimeClass operators are told to apply, as shipped.
	runtimeClass, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "kubernetes", "runtimeclass.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cp.apply(t, string(runtimeClass))
	cp.apply(t, fmt.Sprintf(`apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: bogus}
handler: no-such-handler
---
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data: {greeting: "hello from a configMap"}
---
apiVersion: v1
kind: Secret
metadata: {name: app-secret}
stringData: {password: "s3cr3t"}
---
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  nodeName: %[1]s
  runtimeClassName: wasmtime
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: %[2]s
    args: ["sleep-forever"]
    volumeMounts:
    - {name: config, mountPath: /etc/config}
    - {name: secret, mountPath: /etc/secret, readOnly: true}
    - {name: scratch, mountPath: /scratch}
  volumes:
  - {name: config, configMap: {name: app-config}}
  - {name: secret, secret: {secretName: app-secret}}
  - {name: scratch, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: finisher}
spec:
  nodeName: %[1]s
  runtimeClassName: wasmtime
  restartPolicy: Never
  containers:
  - name: app
    image: %[2]s
    args: ["write", "/dev/termination-log", "done and dusted"]
---
apiVersion: v1
kind: Pod
metadata: {name: plain}
spec:
  nodeName: %[1]s
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: %[2]s
    args: ["sleep-forever"]
---
apiVersion: v1
kind: Pod
metadata: {name: misfit}
spec:
  nodeName: %[1]s
  runtimeClassName: bogus
  containers:
  - name: app
    image: %[2]s
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  nodeName: %[1]s
  runtimeClassName: wasmtime
  terminationGracePeriodSeconds: 5
  containers:
  - name: server
    image: %[3]s
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: web-unready}
spec:
  nodeName: %[1]s
  runtimeClassName: wasmtime
  terminationGracePeriodSeconds: 5
  containers:
  - name: server
    image: %[3]s
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /no-such-page, port: 8080}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 9090}, periodSeconds: 1, failureThreshold: 1}
`, k.node, image, webImage))

	waitFor(t, "app pod Running", 120*time.Second, func() bool {
		return cp.jsonpath("pod", "app", ".status.phase") == "Running"
	})
	// A pod naming no RuntimeClass runs on the default handler, which
	// kubelet looks up under "" (checkKubeletLog fails on "Unknown runtime
	// handler").
	waitFor(t, "plain pod Running", 120*time.Second, func() bool {
		return cp.jsonpath("pod", "plain", ".status.phase") == "Running"
	})
	// Each pod has an address of its own on the daemon's pod network,
	// which kubelet publishes in the pod's status.
	appIP, plainIP := cp.jsonpath("pod", "app", ".status.podIP"), cp.jsonpath("pod", "plain", ".status.podIP")
	if ip := net.ParseIP(appIP); ip == nil || ip.To4() == nil || !strings.HasPrefix(appIP, "10.253.") || appIP == plainIP {
		t.Errorf("pod IPs: app %q, plain %q", appIP, plainIP)
	}
	waitFor(t, "kubectl logs", 30*time.Second, func() bool {
		out, _ := cp.run("logs", "app")
		return strings.Contains(out, "tick 2")
	})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cat", "/etc/config/greeting"}, "hello from a configMap"},
		{[]string{"cat", "/etc/secret/password"}, "s3cr3t"},
		{[]string{"write", "/scratch/note", "kept"}, `/scratch/note holds "kept"`},
		{[]string{"cat", "/scratch/note"}, "kept"},
	} {
		out, err := cp.run(append([]string{"exec", "app", "--", "probe"}, tc.args...)...)
		if err != nil || !strings.Contains(out, tc.want) {
			t.Errorf("kubectl exec app -- probe %s: %q %v", strings.Join(tc.args, " "), out, err)
		}
	}
	if out, err := cp.run("exec", "app", "--", "probe", "write", "/etc/secret/password", "x"); err == nil {
		t.Errorf("wrote into a read-only secret volume: %q", out)
	}

	waitFor(t, "finisher Succeeded", 120*time.Second, func() bool {
		return cp.jsonpath("pod", "finisher", ".status.phase") == "Succeeded"
	})
	if msg := cp.jsonpath("pod", "finisher", ".status.containerStatuses[0].state.terminated.message"); msg != "done and dusted" {
		t.Errorf("termination message = %q", msg)
	}

	var events struct {
		Items []struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"items"`
	}
	waitFor(t, "misfit pod's sandbox failure event", 60*time.Second, func() bool {
		out, _ := cp.run("get", "events", "--field-selector", "involvedObject.name=misfit", "-o", "json")
		json.Unmarshal([]byte(out), &events)
		for _, e := range events.Items {
			if e.Reason == "FailedCreatePodSandBox" && strings.Contains(e.Message, `runtime handler "no-such-handler" is not served by wasmcri`) {
				return true
			}
		}
		return false
	})
	// Probes reach the Wasm server on the pod's address: httpGet and
	// tcpSocket pass where it serves, and fail where it does not (a page it
	// has not: never ready; a port it has not: restarted).
	waitFor(t, "web pod Ready", 120*time.Second, func() bool {
		return cp.jsonpath("pod", "web", `.status.conditions[?(@.type=="Ready")].status`) == "True"
	})
	webIP := cp.jsonpath("pod", "web", ".status.podIP")
	waitServes(t, "http://"+net.JoinHostPort(webIP, "8080")+"/", "Hello from WebAssembly on web")
	waitFor(t, "web-unready restarted by its liveness probe", 120*time.Second, func() bool {
		n, _ := strconv.Atoi(cp.jsonpath("pod", "web-unready", ".status.containerStatuses[0].restartCount"))
		return n >= 1
	})
	if ready := cp.jsonpath("pod", "web-unready", `.status.conditions[?(@.type=="Ready")].status`); ready != "False" {
		t.Errorf("web-unready, whose readiness page is missing, is Ready=%q", ready)
	}
	if n := cp.jsonpath("pod", "web", ".status.containerStatuses[0].restartCount"); n != "0" {
		t.Errorf("web, whose liveness probe passes, restarted %s times", n)
	}

	if phase := cp.jsonpath("pod", "app", ".status.phase"); phase != "Running" {
		t.Errorf("app pod is %s after the misfit failed", phase)
	}
	if n := cp.jsonpath("pod", "app", ".status.containerStatuses[0].restartCount"); n != "0" {
		t.Errorf("app restarted %s times", n)
	}
	checkKubeletLog(t, k, []*regexp.Regexp{regexp.MustCompile(`no-such-handler`)})
}
