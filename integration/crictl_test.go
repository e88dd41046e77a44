package integration

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/testmodule"
)

func podJSON(t *testing.T, name string) string {
	return writeJSON(t, name+"-pod.json", map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": name + "-uid"},
		"log_directory": filepath.Join(t.TempDir(), "pods", name),
		"labels":        map[string]string{"app": name},
	})
}

func containerJSON(t *testing.T, name, image string, args []string, env map[string]string) string {
	var envs []map[string]string
	for k, v := range env {
		envs = append(envs, map[string]string{"key": k, "value": v})
	}
	return writeJSON(t, name+"-ctr.json", map[string]any{
		"metadata":    map[string]any{"name": name},
		"image":       map[string]any{"image": image},
		"args":        args,
		"envs":        envs,
		"log_path":    name + ".log",
		"labels":      map[string]string{"role": name},
		"annotations": map[string]string{"purpose": "test"},
	})
}

// The whole slice, for each image format: pull, list, inspect,
// run a pod, create/start a container, read its logs and exit code, stop
// an endless module within its timeout, and remove everything.
func TestCrictlEndToEnd(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	hello := testmodule.Hello(t)
	for _, format := range []string{"oci", "compat"} {
		t.Run(format, func(t *testing.T) {
			ref := reg + "/wasmcri/hello-" + format + ":v1"
			pushWasm(t, hello, ref, format)

			d.must("pull", ref)
			if images := d.must("images"); !strings.Contains(images, reg+"/wasmcri/hello-"+format) {
				t.Fatalf("crictl images lacks the image:\n%s", images)
			}
			var img struct {
				Status struct {
					ID       string   `json:"id"`
					RepoTags []string `json:"repoTags"`
					Size     string   `json:"size"`
				} `json:"status"`
				Info struct {
					Format string `json:"format"`
				} `json:"info"`
			}
			if err := json.Unmarshal([]byte(d.must("inspecti", ref)), &img); err != nil {
				t.Fatal(err)
			}
			wantFormat := map[string]string{"oci": "wasm-artifact", "compat": "compat"}[format]
			if len(img.Status.RepoTags) != 1 || img.Status.RepoTags[0] != ref || img.Status.Size == "0" {
				t.Errorf("inspecti status = %+v", img.Status)
			}
			if img.Info.Format != wantFormat {
				t.Errorf("inspecti says format %q, want %q", img.Info.Format, wantFormat)
			}

			pod := strings.TrimSpace(d.must("runp", podJSON(t, "pod-"+format)))
			podCfg := podJSON(t, "pod-"+format)
			app := strings.TrimSpace(d.must("create", pod, containerJSON(t, "app", ref, []string{"alpha", "beta gamma"}, map[string]string{"GREETING": "hello-wasm"}), podCfg))
			d.must("start", app)
			st := d.waitState(app, "CONTAINER_EXITED", 20*time.Second)
			if st["exitCode"] != float64(0) || st["reason"] != "Completed" {
				t.Errorf("app exit: %v %v %v", st["exitCode"], st["reason"], st["message"])
			}
			if ps := d.must("ps", "-a", "--pod", pod); !strings.Contains(ps, "Exited") || !strings.Contains(ps, "app") {
				t.Errorf("crictl ps -a:\n%s", ps)
			}
			logs := d.must("logs", app)
			argv0 := map[string]string{"oci": "hello-oci", "compat": "/app.wasm"}[format]
			for _, want := range []string{
				"Hello from WebAssembly!",
				fmt.Sprintf(`args: ["%s" "alpha" "beta gamma"]`, argv0),
				"env: GREETING=hello-wasm",
			} {
				if !strings.Contains(logs, want) {
					t.Errorf("crictl logs lacks %q:\n%s", want, logs)
				}
			}

			failing := strings.TrimSpace(d.must("create", pod, containerJSON(t, "failing", ref, []string{"exit", "3"}, nil), podCfg))
			d.must("start", failing)
			if st := d.waitState(failing, "CONTAINER_EXITED", 20*time.Second); st["exitCode"] != float64(3) || st["reason"] != "Error" {
				t.Errorf("failing exit: %v %v", st["exitCode"], st["reason"])
			}

			endless := strings.TrimSpace(d.must("create", pod, containerJSON(t, "endless", ref, []string{"sleep-forever"}, nil), podCfg))
			d.must("start", endless)
			d.waitState(endless, "CONTAINER_RUNNING", 10*time.Second)
			waitFor(t, "the endless module ticking", 30*time.Second, func() bool {
				logs, _ := d.run("logs", endless)
				return strings.Contains(logs, "tick 1")
			})
			// No graceful phase: the stop does not wait out its timeout. The
			// bound is that timeout, so a busy machine cannot fail it.
			const timeout = 20 * time.Second
			start := time.Now()
			d.must("stop", "--timeout", fmt.Sprint(int(timeout/time.Second)), endless)
			took := time.Since(start)
			t.Logf("crictl stop --timeout %v took %v", timeout, took)
			if took >= timeout/2 {
				t.Errorf("crictl stop --timeout %v took %v: not at once", timeout, took)
			}
			if st := d.inspect(endless); st["state"] != "CONTAINER_EXITED" || st["exitCode"] != float64(137) {
				t.Errorf("after stop: %v exit %v", st["state"], st["exitCode"])
			}
			if logs := d.must("logs", endless); !strings.Contains(logs, "tick 1") {
				t.Errorf("endless module's log:\n%s", logs)
			}

			d.must("rm", app)
			if _, err := d.run("inspect", app); err == nil || !strings.Contains(err.Error(), "NotFound") {
				t.Errorf("inspect of a removed container: %v", err)
			}
			d.must("stopp", pod)
			d.must("rmp", pod)
			if pods := d.must("pods", "-q"); strings.Contains(pods, pod) {
				t.Errorf("pod still listed after rmp:\n%s", pods)
			}
			if ctrs := d.must("ps", "-a", "-q"); strings.Contains(ctrs, endless) {
				t.Errorf("container still listed after rmp:\n%s", ctrs)
			}
			d.must("rmi", ref)
			if images := d.must("images", "-q"); strings.Contains(images, strings.TrimPrefix(img.Status.ID, "sha256:")[:12]) {
				t.Errorf("image still listed after rmi:\n%s", images)
			}
		})
	}
	// Six containers of two images of one module. Each image was removed
	// (and the compiled module with it, as no other image held it) before
	// the next was pulled: one compile per pull, none per container.
	b, err := os.ReadFile(d.cmdLog)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), `msg="compiled module"`); n != 2 {
		t.Errorf("the module was compiled %d times, want once per pull (2)", n)
	}
}

// Pulls by digest, and with credentials from a registry behind htpasswd
// (crictl --creds and --auth fill PullImageRequest.Auth).
func TestCrictlPullByDigestAndWithCredentials(t *testing.T) {
	reg := startRegistryWithAuth(t, "wasm", "s3cret")
	d := newDaemon(t)
	repo := reg + "/private/hello"
	dgst := pushWasm(t, testmodule.Wat(t, testmodule.Print), repo+":v1", "oci", "--username", "wasm", "--password", "s3cret")

	if _, err := d.run("pull", repo+":v1"); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Fatalf("pull without credentials: %v", err)
	}
	if _, err := d.run("pull", "--creds", "wasm:wrong", repo+":v1"); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Fatalf("pull with a wrong password: %v", err)
	}
	d.must("pull", "--creds", "wasm:s3cret", repo+"@"+dgst)
	var img struct {
		Status struct {
			RepoTags    []string `json:"repoTags"`
			RepoDigests []string `json:"repoDigests"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(d.must("inspecti", repo+"@"+dgst)), &img); err != nil {
		t.Fatal(err)
	}
	if len(img.Status.RepoTags) != 0 || len(img.Status.RepoDigests) != 1 || img.Status.RepoDigests[0] != repo+"@"+dgst {
		t.Errorf("pulled by digest: tags %v digests %v", img.Status.RepoTags, img.Status.RepoDigests)
	}
	d.must("pull", "--auth", base64.StdEncoding.EncodeToString([]byte("wasm:s3cret")), repo+":v1")
	if err := json.Unmarshal([]byte(d.must("inspecti", repo+":v1")), &img); err != nil {
		t.Fatal(err)
	}
	if len(img.Status.RepoTags) != 1 || img.Status.RepoTags[0] != repo+":v1" {
		t.Errorf("the tag pull did not join the digest pull's image: %v", img.Status.RepoTags)
	}
}

// Bad input gets a clear gRPC code and harms nothing else.
func TestCrictlBadInput(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	hello := testmodule.Hello(t)
	ref := reg + "/wasmcri/hello:v1"
	pushWasm(t, hello, ref, "oci")
	malformed := reg + "/wasmcri/malformed:v1"
	pushWasm(t, []byte("\x00asm\x01\x00\x00\x00\x01\x05\xff\xff"), malformed, "oci")
	notWasm := reg + "/wasmcri/shell-script:v1"
	pushWasm(t, []byte("#!/bin/sh\necho hi\n"), notWasm, "compat")

	d.must("pull", ref)
	pod := strings.TrimSpace(d.must("runp", podJSON(t, "steady")))
	sleeper := strings.TrimSpace(d.must("create", pod, containerJSON(t, "sleeper", ref, []string{"sleep-forever"}, nil), podJSON(t, "steady")))
	d.must("start", sleeper)

	for _, tc := range []struct {
		args []string
		code string
	}{
		{[]string{"pull", malformed}, "InvalidArgument"},
		{[]string{"pull", notWasm}, "InvalidArgument"},
		{[]string{"pull", reg + "/wasmcri/missing:v1"}, "NotFound"},
		{[]string{"pull", "Invalid Reference"}, "InvalidArgument"},
		{[]string{"inspect", "0123456789ab"}, "NotFound"},
		{[]string{"inspectp", "0123456789ab"}, "NotFound"},
		{[]string{"start", "0123456789ab"}, "NotFound"},
		{[]string{"create", "0123456789ab", containerJSON(t, "x", ref, nil, nil), podJSON(t, "x")}, "NotFound"},
	} {
		_, err := d.run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), "code = "+tc.code) {
			t.Errorf("crictl %s: %v; want code %s", strings.Join(tc.args, " "), err, tc.code)
		}
	}
	// A module that traps in one pod leaves the other pod running.
	trapRef := reg + "/wasmcri/trap:v1"
	pushWasm(t, testmodule.Wat(t, testmodule.Trap), trapRef, "oci")
	d.must("pull", trapRef)
	other := strings.TrimSpace(d.must("runp", podJSON(t, "crashy")))
	trap := strings.TrimSpace(d.must("create", other, containerJSON(t, "trap", trapRef, nil, nil), podJSON(t, "crashy")))
	d.must("start", trap)
	st := d.waitState(trap, "CONTAINER_EXITED", 10*time.Second)
	if st["exitCode"] != float64(1) || st["reason"] != "Error" || !strings.Contains(fmt.Sprint(st["message"]), "unreachable") {
		t.Errorf("trap: exit %v reason %v message %v", st["exitCode"], st["reason"], st["message"])
	}
	if st := d.inspect(sleeper); st["state"] != "CONTAINER_RUNNING" {
		t.Fatalf("the steady pod's container is %v after bad input elsewhere", st["state"])
	}
}

// A crash (SIGKILL) loses nothing the daemon stored: pods, containers and
// images come back, and the container that was running reports why it
// is not any more.
func TestStateSurvivesCrash(t *testing.T) {
	reg := startRegistry(t)
	d := newDaemon(t)
	ref := reg + "/wasmcri/hello:v1"
	pushWasm(t, testmodule.Hello(t), ref, "compat")
	d.must("pull", ref)
	pod := strings.TrimSpace(d.must("runp", podJSON(t, "survivor")))
	running := strings.TrimSpace(d.must("create", pod, containerJSON(t, "running", ref, []string{"sleep-forever"}, nil), podJSON(t, "survivor")))
	created := strings.TrimSpace(d.must("create", pod, containerJSON(t, "created", ref, nil, nil), podJSON(t, "survivor")))
	d.must("start", running)
	d.waitState(running, "CONTAINER_RUNNING", 10*time.Second)

	d.stop(syscall.SIGKILL)
	d.start()

	if pods := d.must("pods", "-q"); !strings.Contains(pods, pod) {
		t.Fatalf("pod lost in the crash:\n%s", pods)
	}
	if images := d.must("images"); !strings.Contains(images, reg+"/wasmcri/hello") {
		t.Fatalf("image lost in the crash:\n%s", images)
	}
	st := d.inspect(running)
	if st["state"] != "CONTAINER_EXITED" || st["reason"] != "DaemonRestarted" {
		t.Errorf("running container after crash: %v %v %v", st["state"], st["reason"], st["message"])
	}
	if st := d.inspect(created); st["state"] != "CONTAINER_CREATED" {
		t.Errorf("created container after crash: %v", st["state"])
	}
	d.must("start", created)
	d.waitState(created, "CONTAINER_EXITED", 20*time.Second)
	if logs := d.must("logs", created); !strings.Contains(logs, "Hello from WebAssembly!") {
		t.Errorf("container started after the crash logged:\n%s", logs)
	}

	// A clean stop removes the socket; the next start finds everything,
	// and a container it ended says why.
	again := strings.TrimSpace(d.must("create", pod, containerJSON(t, "again", ref, []string{"sleep-forever"}, nil), podJSON(t, "survivor")))
	d.must("start", again)
	d.waitState(again, "CONTAINER_RUNNING", 10*time.Second)
	if err := d.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Fatalf("socket left after SIGTERM: %v", err)
	}
	d.start()
	if pods := d.must("pods", "-q"); !strings.Contains(pods, pod) {
		t.Fatalf("pod lost over a clean restart:\n%s", pods)
	}
	if st := d.inspect(again); st["state"] != "CONTAINER_EXITED" || st["reason"] != "DaemonRestarted" || !strings.Contains(fmt.Sprint(st["message"]), "shut down") {
		t.Errorf("container running at a clean shutdown: %v %v %v", st["state"], st["reason"], st["message"])
	}
}
