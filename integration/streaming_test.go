package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/netns"
	"github.com/wasmcri/wasmcri/internal/syncbuf"
	"github.com/wasmcri/wasmcri/internal/testcni"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// Every crictl command kubelet's users reach through a Wasm pod: exec
// (streamed and sync), attach, port-forward, stats, statsp, inspect, logs.
func TestCrictlStreamingAndStats(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	ref := reg + "/wasmcri/hello:v1"
	pushWasm(t, testmodule.Hello(t), ref, "oci")
	d.must("pull", ref)

	// A node-local service listens on the port the pod declares:
	// port-forward must reach the pod's own port, never it.
	nodeService, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer nodeService.Close()
	reached := make(chan struct{}, 1)
	go func() {
		if c, err := nodeService.Accept(); err == nil {
			reached <- struct{}{}
			c.Close()
		}
	}()
	podPort := nodeService.Addr().(*net.TCPAddr).Port
	podCfg := writeJSON(t, "pod.json", map[string]any{
		"metadata":      map[string]any{"name": "streams", "namespace": "default", "uid": "streams-uid"},
		"log_directory": t.TempDir(),
		"port_mappings": []map[string]any{{"container_port": podPort}},
	})
	pod := strings.TrimSpace(d.must("runp", podCfg))
	// The container declares no port of its own (an empty ports
	// annotation, as kubelet's would be): the test serves the pod's port.
	mainCfg := writeJSON(t, "main-ctr.json", map[string]any{
		"metadata":    map[string]any{"name": "main"},
		"image":       map[string]any{"image": ref},
		"args":        []string{"sleep-forever"},
		"envs":        []map[string]string{{"key": "ROLE", "value": "server"}},
		"log_path":    "main.log",
		"annotations": map[string]string{"io.kubernetes.container.ports": "[]"},
	})
	main := strings.TrimSpace(d.must("create", pod, mainCfg, podCfg))
	d.must("start", main)
	d.waitState(main, "CONTAINER_RUNNING", 10*time.Second)

	t.Run("exec -s", func(t *testing.T) {
		start := time.Now()
		out := d.must("exec", "-s", main, "probe", "write", "/tmp-note", "hi")
		quick := time.Since(start) // a whole crictl exec on this machine now: the baseline below
		if !strings.Contains(out, `/tmp-note holds "hi"`) {
			t.Errorf("exec -s output: %q", out)
		}
		if _, err := d.run("exec", "-s", main, "probe", "exit", "3"); err == nil || !strings.Contains(err.Error(), "exited with 3") {
			t.Errorf("exec -s of a failing command: %v", err)
		}
		// Past its timeout the exec ends at it: not before, and not much
		// after, much being measured against a quick exec of this run.
		const timeout = time.Second
		start = time.Now()
		if _, err := d.run("exec", "-s", "--timeout", fmt.Sprint(int(timeout/time.Second)), main, "probe", "sleep-forever"); err == nil || !strings.Contains(err.Error(), "DeadlineExceeded") {
			t.Errorf("exec -s past its timeout: %v", err)
		}
		took := time.Since(start)
		t.Logf("exec -s --timeout %v took %v (a quick exec %v)", timeout, took, quick)
		if took < timeout || took > 2*timeout+10*quick {
			t.Errorf("exec -s --timeout %v took %v (a quick exec %v)", timeout, took, quick)
		}
	})

	// SPDY only: kubelet's CRI streaming library speaks websocket up to
	// v4 of the channel protocol, and crictl's websocket transport asks
	// for v5 alone (containerd, on the same library, answers the same 403).
	for _, transport := range []string{"spdy"} {
		t.Run("exec over "+transport, func(t *testing.T) {
			out := d.must("exec", "-r", transport, main, "probe", "cat", "/tmp-note")
			if out != "hi" {
				t.Errorf("exec cat: %q", out)
			}
			out, err := d.runWithInput(strings.NewReader("typed into exec\n"), "exec", "-r", transport, "-i", main, "probe", "echo-stdin")
			if err != nil || out != "typed into exec\n" {
				t.Errorf("exec -i: %q %v", out, err)
			}
			out = d.must("exec", "-r", transport, main, "probe")
			if !strings.Contains(out, "env: ROLE=server") || !strings.Contains(out, `args: ["probe"]`) {
				t.Errorf("exec environment:\n%s", out)
			}
			if _, err := d.run("exec", "-r", transport, main, "probe", "exit", "5"); err == nil || !strings.Contains(err.Error(), "command terminated with exit code 5") {
				t.Errorf("exec exit code: %v", err)
			}
		})
	}

	t.Run("attach", func(t *testing.T) {
		cfg := writeJSON(t, "echo.json", map[string]any{
			"metadata": map[string]any{"name": "echo"}, "image": map[string]any{"image": ref},
			"args": []string{"echo-stdin"}, "log_path": "echo.log", "stdin": true, "stdin_once": true,
		})
		echo := strings.TrimSpace(d.must("create", pod, cfg, podCfg))
		d.must("start", echo)
		d.waitState(echo, "CONTAINER_RUNNING", 10*time.Second)
		out, err := d.runWithInput(strings.NewReader("through attach\n"), "attach", "-i", echo)
		if err != nil || !strings.Contains(out, "through attach") {
			t.Fatalf("attach -i: %q %v", out, err)
		}
		st := d.waitState(echo, "CONTAINER_EXITED", 10*time.Second)
		if st["exitCode"] != float64(0) {
			t.Errorf("stdin_once container after its attach: exit %v", st["exitCode"])
		}
		if logs := d.must("logs", echo); !strings.Contains(logs, "through attach") {
			t.Errorf("attached input's echo is not in the log: %q", logs)
		}
	})

	t.Run("port-forward reaches the pod, not the node", func(t *testing.T) {
		// The test serves on the pod's own loopback, inside its
		// namespace, on the very port the node's service has.
		_, ns := d.podNetwork(pod)
		var inPod net.Listener
		if err := netns.Do(ns, func() (err error) { inPod, err = net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(podPort)); return err }); err != nil {
			t.Fatal(err)
		}
		defer inPod.Close()
		go testcni.Answer(inPod, "the pod answers")

		local := freePort(t)
		ctx, cancel := context.WithCancel(context.Background())
		cmd := d.crictlCmd(ctx, "port-forward", pod, fmt.Sprintf("%d:%d", local, podPort))
		stderr := &syncbuf.Buffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); cmd.Wait() }()
		var conn net.Conn
		waitFor(t, "port-forward listening", 10*time.Second, func() bool {
			c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(local))
			conn = c
			return err == nil
		})
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if b, err := io.ReadAll(conn); string(b) != "the pod answers" {
			t.Fatalf("through port-forward: %q, %v (crictl: %s)", b, err, stderr.String())
		}
		select {
		case <-reached:
			t.Fatal("port-forward reached a service on the node's loopback")
		default:
		}
	})

	t.Run("stats and statsp", func(t *testing.T) {
		var stats struct {
			Stats []struct {
				Attributes struct{ ID string } `json:"attributes"`
				CPU        struct {
					UsageCoreNanoSeconds struct{ Value string } `json:"usageCoreNanoSeconds"`
				} `json:"cpu"`
				Memory struct {
					WorkingSetBytes struct{ Value string } `json:"workingSetBytes"`
				} `json:"memory"`
				WritableLayer struct {
					InodesUsed struct{ Value string } `json:"inodesUsed"`
				} `json:"writableLayer"`
			} `json:"stats"`
		}
		if err := json.Unmarshal([]byte(d.must("stats", "-o", "json", "--id", main)), &stats); err != nil {
			t.Fatal(err)
		}
		if len(stats.Stats) != 1 || stats.Stats[0].Attributes.ID != main {
			t.Fatalf("crictl stats: %+v", stats)
		}
		s := stats.Stats[0]
		if n, _ := strconv.ParseUint(s.Memory.WorkingSetBytes.Value, 10, 64); n < 1<<20 {
			t.Errorf("memory working set %s", s.Memory.WorkingSetBytes.Value)
		}
		if n, _ := strconv.ParseUint(s.CPU.UsageCoreNanoSeconds.Value, 10, 64); n == 0 {
			t.Errorf("cpu usage %s", s.CPU.UsageCoreNanoSeconds.Value)
		}
		if table := d.must("stats"); !strings.Contains(table, main[:13]) {
			t.Errorf("crictl stats table:\n%s", table)
		}
		var podStats struct {
			Stats []struct {
				Attributes struct{ ID string } `json:"attributes"`
				Linux      struct {
					Containers []any `json:"containers"`
				} `json:"linux"`
			} `json:"stats"`
		}
		if err := json.Unmarshal([]byte(d.must("statsp", "-o", "json", "--id", pod)), &podStats); err != nil {
			t.Fatal(err)
		}
		if len(podStats.Stats) != 1 || podStats.Stats[0].Attributes.ID != pod || len(podStats.Stats[0].Linux.Containers) < 1 {
			t.Fatalf("crictl statsp: %+v", podStats)
		}
	})

	t.Run("inspect and logs", func(t *testing.T) {
		if st := d.inspect(main); st["state"] != "CONTAINER_RUNNING" {
			t.Errorf("inspect: %v", st["state"])
		}
		if logs := d.must("logs", "--tail", "1", main); !strings.HasPrefix(logs, "tick ") {
			t.Errorf("logs --tail 1: %q", logs)
		}
	})
}

// Long lines come back whole from crictl logs (written as partial records),
// and a flood of output is neither blocked nor dropped.
func TestCrictlLogsLongLinesAndFloods(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	ref := reg + "/wasmcri/hello:v1"
	pushWasm(t, testmodule.Hello(t), ref, "oci")
	d.must("pull", ref)
	podCfg := podJSON(t, "logs")
	pod := strings.TrimSpace(d.must("runp", podCfg))

	long := strings.TrimSpace(d.must("create", pod, containerJSON(t, "long", ref, []string{"long-line", "40000"}, nil), podCfg))
	d.must("start", long)
	d.waitState(long, "CONTAINER_EXITED", 20*time.Second)
	out := d.must("logs", long)
	if len(out) != 40001 || !strings.HasPrefix(out, "abcdefghij") || strings.Count(out, "\n") != 1 {
		t.Errorf("a 40000-character line came back as %d bytes with %d newlines", len(out), strings.Count(out, "\n"))
	}

	const n = 200000
	flood := strings.TrimSpace(d.must("create", pod, containerJSON(t, "flood", ref, []string{"lines", strconv.Itoa(n)}, nil), podCfg))
	start := time.Now()
	d.must("start", flood)
	d.waitState(flood, "CONTAINER_EXITED", 60*time.Second)
	t.Logf("%d lines logged in %v", n, time.Since(start))
	lines := strings.Split(strings.TrimSuffix(d.must("logs", flood), "\n"), "\n")
	if len(lines) != n {
		t.Fatalf("%d lines logged, want %d", len(lines), n)
	}
	for i, l := range lines {
		if l != "line "+strconv.Itoa(i) {
			t.Fatalf("line %d is %q", i, l)
		}
	}
}
