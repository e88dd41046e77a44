//go:build conformance

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// TestCritest runs cri-tools' validation suite (critest) against a fresh
// daemon, with every image critest pulls served as the Wasm test image
// (integration/images/wasmbox) from a loopback registry through wasmcri's
// registry mirrors. `make conformance` runs it; it needs CRITEST and the
// registry. It fails on any failed spec and on any spec skipped that is
// not in leftOut, and writes the report to WASMCRI_CONFORMANCE_DOC.

// leftOut are the specs that cannot apply to a Wasm runtime, each with
// why. Each pattern is matched against a spec's full text.
var leftOut = []struct {
	pattern, reason string
}{
	{`AppArmor`, "AppArmor confines a Linux process's system calls and files by a kernel profile. A Wasm module makes no system calls; all it can reach are the WASI preopens its container's config grants."},
	{`Security Context NamespaceOption`, "PID, IPC and network namespaces as a process sees them. WASI preview 1 has no process IDs (no /proc, no signals) and no System V IPC, so there is nothing a module could share or see across pods or with the host; the HostNetwork specs run netstat in the container to list the node's listening sockets, and a module can neither list sockets nor open any beyond the listeners it is handed (pods do get network namespaces of their own, or the node's: tested with crictl and kubelet)."},
	{`Security Context bucket runtime should support (SupplementalGroups|RunAsUser|RunAsUserName|RunAsGroup)$`, "Users and groups. WASI has no user or group identity: a module cannot ask who it runs as, and it reaches files only through preopens opened by the runtime, so run-as settings have nothing to act on."},
	{`Security Context bucket runtime should support Privileged is (true|false)`, "Privileged mode grants Linux capabilities and host devices; the spec checks by creating a network bridge. A module has no network devices, capabilities or device access to grant."},
	{`Security Context bucket runtime should support (adding|dropping)( ALL)? capabilit`, "Linux capabilities (the spec reads CapBnd from /proc/self/status). A module runs no Linux process of its own and makes no system calls that capabilities gate."},
	{`Security Context SupplementalGroupsPolicy`, "Supplementary groups of the container's process: WASI has no group identity."},
	{`Security Context SeccompProfilePath`, "seccomp filters a Linux process's system calls (the specs test sethostname). A module makes no system calls; WASI offers no way to set the hostname."},
	{`Security Context NoNewPrivs`, "no_new_privs stops setuid programs from gaining privileges. A module runs no programs and has no privileges to gain."},
	{`Security Context UserNamespaces`, "Linux user namespaces and ID-mapped mounts. WASI has no user IDs to map."},
	{`NRI `, "NRI plugins adjust the OCI runtime spec (Linux resources, mounts, devices, hooks) of runc-style containers through containerd or CRI-O; a Wasm container has no OCI runtime spec, and wasmcri does not speak NRI."},
	{`Container Mount Propagation`, "Mount propagation needs mounts made inside the container (the spec runs mount --bind in it). A module cannot mount anything; its files are preopened directories."},
	{`PodSandbox runtime should support sysctls`, "Namespaced kernel parameters (kernel.shm_rmid_forced, net.*). A pod of modules has no kernel namespaces to tune."},
	{`Streaming runtime should support streaming interfaces runtime should support portforward in host network`, "The spec runs cri-tools' fixed Linux image gcr.io/k8s-staging-cri-tools/hostnet-nginx (the test images file cannot replace it), and forwards into a pod on the node's network, which wasmcri refuses: it would reach the node's loopback services rather than the pod's (port-forward into pods with a network of their own passes)."},
	{`Image Manager public image with digest should be pulled and removed`, "The spec pulls cri-tools' upstream test image by a fixed digest: a Linux image, which a Wasm runtime refuses by design, and whose bytes no Wasm image can reproduce. Pull by digest is tested with Wasm images in integration/crictl_test.go."},
}

// wasmboxImage is one name critest pulls, served as the Wasm test image
// (a mirror keeps the path: registry.k8s.io/pause:3.9 is <reg>/pause:3.9).
type wasmboxImage struct {
	name  string // as critest names it
	user  string
	cmd   []string
	extra string // images with the same extra are one image
}

func conformanceImages() []wasmboxImage {
	const staging = "gcr.io/k8s-staging-cri-tools/"
	imgs := []wasmboxImage{
		{name: "registry.k8s.io/e2e-test-images/busybox:1.29-2"},
		{name: "registry.k8s.io/e2e-test-images/httpd:2.4.39-4", cmd: []string{"httpd"}, extra: "httpd"},
		{name: "registry.k8s.io/e2e-test-images/nginx:1.14-2", cmd: []string{"httpd"}, extra: "httpd"},
		{name: "registry.k8s.io/pause:3.9", cmd: []string{"top"}, extra: "pause"},
		{name: "k8s.gcr.io/pause:3.9", cmd: []string{"top"}, extra: "pause"},
		{name: staging + "test-image-latest:latest"},
		{name: staging + "test-image-tag:test"},
		{name: staging + "test-image-tag:all"},
		{name: staging + "test-image-1:latest", extra: "1"},
		{name: staging + "test-image-2:latest", extra: "2"},
		{name: staging + "test-image-3:latest", extra: "3"},
		{name: staging + "test-image-tags:1", extra: "tags"},
		{name: staging + "test-image-tags:2", extra: "tags"},
		{name: staging + "test-image-tags:3", extra: "tags"},
		{name: staging + "test-image-user-uid:latest", user: "1002"},
		{name: staging + "test-image-user-username:latest", user: "www-data"},
		{name: staging + "test-image-user-uid-group:latest", user: "1003:1003"},
		{name: staging + "test-image-user-username-group:latest", user: "www-data:www-data"},
		{name: staging + "test-image-predefined-group:latest", user: "1000:50000"},
	}
	return imgs
}

// wasmboxCompat is the Wasm test image as a compat image: the module at
// /bin/busybox.wasm, its applets as symlinks in /bin, and the /etc files
// a busybox image has.
func wasmboxCompat(t *testing.T, module []byte, img wasmboxImage) *imagebuild.Built {
	t.Helper()
	files := []imagebuild.TarEntry{
		{Name: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\nuser:x:1000:1000::/home/user:/bin/sh\n")},
		{Name: "/etc/group", Data: []byte("root:x:0:\nwww-data:x:33:\nuser:x:1000:\ngroup:x:50000:user\n")},
		{Name: "/tmp/.keep"},
	}
	for _, applet := range []string{"sh", "echo", "cat", "sleep", "top", "ls", "test", "[", "touch", "mkdir", "rm", "env", "hostname", "pwd", "true", "false", "grep", "id", "pgrep", "dd", "head", "wc", "httpd", "seq", "sync"} {
		files = append(files, imagebuild.TarEntry{Name: "/bin/" + applet, Link: "busybox.wasm"})
	}
	// Images are distinct (their own image IDs) unless extra says which
	// must be one image under several names.
	mark := img.extra
	if mark == "" {
		mark = img.name
	}
	files = append(files, imagebuild.TarEntry{Name: "/etc/wasmbox-image", Data: []byte(mark + "\n")})
	cmd := img.cmd
	if cmd == nil {
		cmd = []string{"sh"}
	}
	b, err := imagebuild.BuildCompat(module, imagebuild.CompatOptions{
		ModulePath: "/bin/busybox.wasm",
		Entrypoint: []string{},
		Cmd:        cmd,
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		User:       img.user,
		Files:      files,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCritest(t *testing.T) {
	critest := tool(t, "CRITEST", "critest")
	reg := startRegistry(t)
	module := testmodule.Wasmbox(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, img := range conformanceImages() {
		_, path, _ := strings.Cut(img.name, "/")
		if err := imagebuild.Push(ctx, reg+"/"+path, wasmboxCompat(t, module, img), image.RegistryOptions{PlainHTTP: []string{reg}}, nil); err != nil {
			t.Fatalf("push %s: %v", img.name, err)
		}
	}
	own := reg + "/wasmcri/wasmbox:conformance"
	if err := imagebuild.Push(ctx, own, wasmboxCompat(t, module, wasmboxImage{name: "wasmbox"}), image.RegistryOptions{PlainHTTP: []string{reg}}, nil); err != nil {
		t.Fatal(err)
	}

	// Every registry critest names is mirrored to the test registry.
	hostsDir := t.TempDir()
	for _, host := range []string{"registry.k8s.io", "gcr.io", "k8s.gcr.io"} {
		hosts := fmt.Sprintf("server = \"https://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, reg)
		os.MkdirAll(filepath.Join(hostsDir, host), 0o755)
		if err := os.WriteFile(filepath.Join(hostsDir, host, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := newDaemonWithConfig(t, fmt.Sprintf("[registry]\nconfig_path = %q\nplain_http = [%q]\n", hostsDir, reg))

	dir := t.TempDir()
	imagesFile := filepath.Join(dir, "test-images.yaml")
	os.WriteFile(imagesFile, []byte(fmt.Sprintf("defaultTestContainerImage: %s\nwebServerTestImage: %s\n", own, "registry.k8s.io/e2e-test-images/nginx:1.14-2")), 0o644)
	common := []string{
		"-runtime-endpoint", "unix://" + d.socket,
		"-image-endpoint", "unix://" + d.socket,
		"-runtime-handler", "wasmtime",
		"-test-images-file", imagesFile,
		"-ginkgo.no-color",
		"-ginkgo.timeout", "40m",
	}
	for _, l := range leftOut {
		common = append(common, "-ginkgo.skip", l.pattern)
	}
	if focus := os.Getenv("CRITEST_FOCUS"); focus != "" {
		common = append(common, "-ginkgo.focus", focus)
	}
	// The validation specs, then the benchmark specs, which critest runs
	// only when asked and skips otherwise.
	specs, runErr := runCritest(t, critest, dir, "critest", common...)
	params := filepath.Join(dir, "benchmark-params.yaml")
	os.WriteFile(params, []byte(fmt.Sprintf(`containersNumber: 50
containersNumberParallel: 2
podsNumber: 50
podsNumberParallel: 2
imagesNumber: 10
imagesNumberParallel: 2
imagePullingBenchmarkImage: %s
imageListingBenchmarkImages: [%s, gcr.io/k8s-staging-cri-tools/test-image-1:latest, gcr.io/k8s-staging-cri-tools/test-image-2:latest]
`, own, own)), 0o644)
	benchOut := filepath.Join(dir, "benchmarks")
	if keep := os.Getenv("WASMCRI_CONFORMANCE_OUT"); keep != "" {
		benchOut = filepath.Join(keep, "benchmarks")
	}
	os.MkdirAll(benchOut, 0o755)
	bench, benchErr := runCritest(t, critest, dir, "critest-benchmark", append(common, "-benchmark", "-benchmarking-params-file", params, "-benchmarking-output-dir", benchOut)...)
	ran := map[string]spec{}
	for _, s := range bench {
		if s.state != "skipped" {
			ran[s.text] = s
		}
	}
	for i, s := range specs {
		if b, ok := ran[s.text]; ok && s.state == "skipped" {
			specs[i] = b
		}
	}
	runErr = errors.Join(runErr, benchErr)

	counts := map[string]int{}
	var bad []string
	for i := range specs {
		s := &specs[i]
		s.reason = leftOutReason(s.text)
		counts[s.state]++
		switch {
		case s.state == "passed":
		case s.state == "skipped" && s.reason != "":
		case s.state == "skipped":
			bad = append(bad, fmt.Sprintf("skipped but not left out: %s: %s", s.text, s.message))
		default:
			bad = append(bad, fmt.Sprintf("%s: %s: %s", s.state, s.text, s.message))
		}
	}
	t.Logf("critest: %d specs: %d passed, %d failed, %d skipped (left out)", len(specs), counts["passed"], len(specs)-counts["passed"]-counts["skipped"], counts["skipped"])
	fmt.Printf("critest: %d specs: %d passed, %d failed, %d skipped (left out)\n", len(specs), counts["passed"], len(specs)-counts["passed"]-counts["skipped"], counts["skipped"])
	for _, l := range leftOut {
		if !slices.ContainsFunc(specs, func(s spec) bool { return s.reason == l.reason }) {
			bad = append(bad, "left-out pattern matches no spec: "+l.pattern)
		}
	}
	if doc := os.Getenv("WASMCRI_CONFORMANCE_DOC"); doc != "" && os.Getenv("CRITEST_FOCUS") == "" {
		if err := writeConformanceDoc(doc, specs, counts, benchmarkFigures(t, benchOut)); err != nil {
			t.Error(err)
		}
	}
	if len(bad) > 0 {
		t.Errorf("%d specs not passing:\n%s\n\n%v", len(bad), strings.Join(bad, "\n"), runErr)
	} else if runErr != nil {
		t.Errorf("critest failed with every spec passing or left out: %v", runErr)
	}
}

// runCritest runs critest with args and returns its specs; the report and
// log go to dir and to WASMCRI_CONFORMANCE_OUT, named name.
func runCritest(t *testing.T, critest, dir, name string, args ...string) ([]spec, error) {
	t.Helper()
	report := filepath.Join(dir, name+".json")
	cmd := exec.Command(critest, append(args, "-ginkgo.json-report", report)...)
	cmd.Dir = dir
	out, runErr := cmd.CombinedOutput()
	if keep := os.Getenv("WASMCRI_CONFORMANCE_OUT"); keep != "" {
		os.MkdirAll(keep, 0o755)
		os.WriteFile(filepath.Join(keep, name+".log"), out, 0o644)
		if b, err := os.ReadFile(report); err == nil {
			os.WriteFile(filepath.Join(keep, name+".json"), b, 0o644)
		}
	}
	specs, err := readGinkgoReport(report)
	if err != nil {
		t.Fatalf("%s wrote no report (%v): %v\n%s", name, runErr, err, tail(string(out), 60))
	}
	if runErr != nil {
		runErr = fmt.Errorf("%s: %v\n%s", name, runErr, tail(string(out), 60))
	}
	return specs, runErr
}

// spec is one entry of ginkgo's JSON report.
type spec struct {
	text, state, message, reason string
}

func readGinkgoReport(file string) ([]spec, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var reports []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
			Failure                 *struct{ Message string }
		}
	}
	if err := json.Unmarshal(b, &reports); err != nil {
		return nil, err
	}
	var specs []spec
	for _, r := range reports {
		for _, s := range r.SpecReports {
			if s.LeafNodeType != "It" {
				continue
			}
			sp := spec{text: strings.Join(append(s.ContainerHierarchyTexts, s.LeafNodeText), " "), state: s.State}
			if s.Failure != nil {
				sp.message = s.Failure.Message
			}
			specs = append(specs, sp)
		}
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("no specs in %s", file)
	}
	return specs, nil
}

// benchmarkFigures sums up critest's benchmark data files: per operation,
// the median and 95th percentile of its durations.
func benchmarkFigures(t *testing.T, dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "*_benchmark_data.json"))
	sort.Strings(files)
	var b strings.Builder
	b.WriteString("| benchmark | operation | samples | median | p95 |\n|---|---|---|---|---|\n")
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Error(err)
			continue
		}
		var set struct {
			OperationsNames []string `json:"operationsNames"`
			Datapoints      []struct {
				OperationsDurationsNs []int64 `json:"operationsDurationsNs"`
			} `json:"datapoints"`
		}
		if err := json.Unmarshal(raw, &set); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		name := strings.TrimSuffix(filepath.Base(f), "_benchmark_data.json")
		for i, op := range set.OperationsNames {
			var ds []time.Duration
			for _, dp := range set.Datapoints {
				if i < len(dp.OperationsDurationsNs) {
					ds = append(ds, time.Duration(dp.OperationsDurationsNs[i]))
				}
			}
			if len(ds) == 0 {
				continue
			}
			slices.Sort(ds)
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s |\n", name, op, len(ds), ds[len(ds)/2].Round(time.Microsecond), ds[(len(ds)*95)/100].Round(time.Microsecond))
		}
	}
	return b.String()
}

func leftOutReason(text string) string {
	for _, l := range leftOut {
		if regexp.MustCompile(l.pattern).MatchString(text) {
			return l.reason
		}
	}
	return ""
}

// writeConformanceDoc writes docs/conformance.md: counts, then every spec
// with its result, the left-out ones with their reason.
func writeConformanceDoc(file string, specs []spec, counts map[string]int, figures string) error {
	sort.Slice(specs, func(i, j int) bool { return specs[i].text < specs[j].text })
	var b strings.Builder
	fmt.Fprintf(&b, "# critest conformance\n\n")
	fmt.Fprintf(&b, "Generated by `make conformance`: cri-tools' validation suite (critest %s) against\n", os.Getenv("CRITEST_VERSION"))
	fmt.Fprintf(&b, "a fresh wasmcri with `-runtime-handler wasmtime`. Every image critest pulls is the Wasm\n")
	fmt.Fprintf(&b, "test image `integration/images/wasmbox` (a busybox-like WASI program), pushed to a loopback\n")
	fmt.Fprintf(&b, "registry under critest's names and served through wasmcri's registry mirrors\n")
	fmt.Fprintf(&b, "(`registry.k8s.io`, `gcr.io`, `k8s.gcr.io`).\n\n")
	fmt.Fprintf(&b, "**%d specs: %d passed, %d failed, %d left out** (skipped, each for the reason given).\n\n", len(specs), counts["passed"], len(specs)-counts["passed"]-counts["skipped"], counts["skipped"])
	fmt.Fprintf(&b, "## Why specs are left out\n\n")
	for _, l := range leftOut {
		n := 0
		for _, s := range specs {
			if s.reason == l.reason {
				n++
			}
		}
		fmt.Fprintf(&b, "- `%s` (%d): %s\n", l.pattern, n, l.reason)
	}
	fmt.Fprintf(&b, "\n## critest's benchmarks\n\n")
	fmt.Fprintf(&b, "critest's own figures from the `-benchmark` run (one run on the CI machine, 2 workers in\n")
	fmt.Fprintf(&b, "parallel; a CRI call's time as critest's client sees it). `docs/performance.md` has wasmcri's\n")
	fmt.Fprintf(&b, "benchmarks against their baselines. CreateContainer mounts the container's writable layer (a\n")
	fmt.Fprintf(&b, "tmpfs) and, for the test's compat image, an overlay over the image's unpacked files: nothing is\n")
	fmt.Fprintf(&b, "copied, and no file is created on the node's disk.\n\n%s", figures)
	fmt.Fprintf(&b, "\n## Every spec\n\n| spec | result |\n|---|---|\n")
	for _, s := range specs {
		result := s.state
		if s.state == "skipped" && s.reason != "" {
			result = "left out"
		}
		fmt.Fprintf(&b, "| %s | %s |\n", strings.ReplaceAll(s.text, "|", `\|`), result)
	}
	return os.WriteFile(file, []byte(b.String()), 0o644)
}
