package cri_test

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	clog "github.com/containerd/log"
	"github.com/wasmcri/wasmcri/config"
	"github.com/wasmcri/wasmcri/daemon"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/image/imagebuild"
	"github.com/wasmcri/wasmcri/internal/testcni"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	"github.com/wasmcri/wasmcri/internal/testregistry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestMain(m *testing.M) {
	_ = clog.SetLevel("error")
	os.Exit(m.Run())
}

type clients struct {
	rt  runtimeapi.RuntimeServiceClient
	img runtimeapi.ImageServiceClient
	reg string
	// root is the daemon's root directory.
	root string
}

// start runs the real daemon on temp dirs and connects to its socket.
func start(t *testing.T) clients { t.Helper(); return startWith(t, nil, io.Discard) }

// startWith is start with the config changed by tweak (when not nil) and
// the daemon's log written to log.
func startWith(t *testing.T, tweak func(*config.Config), log io.Writer) clients {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "wcri") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Root, cfg.State = filepath.Join(dir, "root"), filepath.Join(dir, "state")
	cfg.GRPC.Address = filepath.Join(sockDir, "cri.sock")
	cfg.Runtime.Handlers = []string{"wasmtime", "spare"}
	cfg.Network.CNIBinDirs = testcni.Require(t)
	cfg.Network.CNIConfDir = filepath.Join(dir, "net.d")
	cfg.Network.DefaultBridge, cfg.Network.DefaultSubnet = testcni.Network(t, "10.251")
	testcni.UnpinAtEnd(t, filepath.Join(cfg.State, "netns"))
	if tweak != nil {
		tweak(cfg)
	}
	d, err := daemon.Start(cfg, "test", slog.New(slog.NewTextHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop(time.Second) })
	conn, err := grpc.NewClient("unix://"+cfg.GRPC.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return clients{rt: runtimeapi.NewRuntimeServiceClient(conn), img: runtimeapi.NewImageServiceClient(conn), reg: testregistry.Start(t), root: cfg.Root}
}

func (c clients) push(t *testing.T, name string, module []byte) string {
	t.Helper()
	ref := c.reg + "/cri/" + name + ":1"
	if err := imagebuild.Push(context.Background(), ref, imagebuild.BuildArtifact(module, image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer), image.RegistryOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	return ref
}

// runContainer pulls the hello module and runs it with args in a new pod.
func (c clients) runContainer(t *testing.T, pod string, resources *runtimeapi.LinuxContainerResources, args ...string) (sandboxID, containerID string) {
	t.Helper()
	ctx := context.Background()
	ref := c.push(t, "hello", testmodule.Hello(t))
	if _, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Fatal(err)
	}
	sb, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig(pod, map[string]string{"pod": pod})})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
		Image:    &runtimeapi.ImageSpec{Image: ref},
		Args:     args,
		LogPath:  "main.log",
		Labels:   map[string]string{"app": pod},
	}
	if resources != nil {
		cfg.Linux = &runtimeapi.LinuxContainerConfig{Resources: resources}
	}
	ctr, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatal(err)
	}
	return sb.PodSandboxId, ctr.ContainerId
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: got %v, want code %v", what, err, code)
	}
}

func podConfig(name string, labels map[string]string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:    &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "ns", Uid: name, Attempt: 1},
		Labels:      labels,
		Annotations: map[string]string{"note": name},
	}
}

func TestVersionAndStatus(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	v, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil || v.RuntimeName != "wasmcri" || v.RuntimeApiVersion != "v1" || v.RuntimeVersion != "0.0.0-dev+test" {
		t.Fatalf("Version = %v, %v", v, err)
	}
	st, err := c.rt.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	ready := map[string]bool{}
	for _, cond := range st.Status.Conditions {
		ready[cond.Type] = cond.Status
	}
	if !ready[runtimeapi.RuntimeReady] || !ready[runtimeapi.NetworkReady] {
		t.Errorf("conditions = %v", st.Status.Conditions)
	}
	// The default handler, also under "" (kubelet asks for the handler a
	// pod names, and most name none), then each configured one.
	var names []string
	for _, h := range st.RuntimeHandlers {
		names = append(names, h.Name)
		if !h.GetFeatures().GetRecursiveReadOnlyMounts() {
			t.Errorf("handler %q without recursive read-only mounts", h.Name)
		}
	}
	if strings.Join(names, ",") != ",wasmtime,spare" || st.Info["config"] == "" {
		t.Errorf("handlers %q info %v", names, st.Info)
	}
}

func TestListsFilterAndRoundTrip(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	ref := c.push(t, "print", testmodule.Wat(t, testmodule.Print))
	pulled, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		t.Fatal(err)
	}

	a, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("a", map[string]string{"app": "web", "tier": "front"})})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("b", map[string]string{"app": "db"}), RuntimeHandler: "spare"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: b.PodSandboxId}); err != nil {
		t.Fatal(err)
	}

	listPods := func(f *runtimeapi.PodSandboxFilter) []string {
		t.Helper()
		r, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: f})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, p := range r.Items {
			ids = append(ids, p.Metadata.Name)
		}
		return ids
	}
	for name, tc := range map[string]struct {
		f    *runtimeapi.PodSandboxFilter
		want string
	}{
		"all":       {nil, "[a b]"},
		"by id":     {&runtimeapi.PodSandboxFilter{Id: a.PodSandboxId}, "[a]"},
		"by prefix": {&runtimeapi.PodSandboxFilter{Id: b.PodSandboxId[:8]}, "[b]"},
		"ready":     {&runtimeapi.PodSandboxFilter{State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}}, "[a]"},
		"not ready": {&runtimeapi.PodSandboxFilter{State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY}}, "[b]"},
		"labels":    {&runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"app": "web", "tier": "front"}}, "[a]"},
		"no match":  {&runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"app": "web", "tier": "back"}}, "[]"},
	} {
		if got := fmtList(listPods(tc.f)); got != tc.want {
			t.Errorf("ListPodSandbox %s = %s, want %s", name, got, tc.want)
		}
	}

	ps, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: b.PodSandboxId})
	if err != nil {
		t.Fatal(err)
	}
	if ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY || ps.Status.RuntimeHandler != "spare" ||
		ps.Status.Metadata.Attempt != 1 || ps.Status.Annotations["note"] != "b" || ps.Status.CreatedAt == 0 {
		t.Errorf("PodSandboxStatus = %v", ps.Status)
	}

	create := func(name string, labels map[string]string) string {
		t.Helper()
		r, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: a.PodSandboxId, Config: &runtimeapi.ContainerConfig{
			Metadata:    &runtimeapi.ContainerMetadata{Name: name, Attempt: 2},
			Image:       &runtimeapi.ImageSpec{Image: pulled.ImageRef, UserSpecifiedImage: ref},
			Labels:      labels,
			Annotations: map[string]string{"k": name},
			LogPath:     name + ".log",
		}})
		if err != nil {
			t.Fatal(err)
		}
		return r.ContainerId
	}
	runs := create("runs", map[string]string{"role": "main"})
	waits := create("waits", map[string]string{"role": "side"})
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: runs}); err != nil {
		t.Fatal(err)
	}
	waitExited(t, c, runs)
	r, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: runs})
	if err != nil {
		t.Fatal(err)
	}
	st := r.Status
	if st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 0 || st.Reason != "Completed" ||
		st.StartedAt == 0 || st.FinishedAt < st.StartedAt || st.CreatedAt > st.StartedAt {
		t.Errorf("status = %v", st)
	}
	if st.Image.Image != ref || st.Image.UserSpecifiedImage != ref || st.ImageId != pulled.ImageRef || st.ImageRef == "" ||
		st.Labels["role"] != "main" || st.Annotations["k"] != "runs" || st.Metadata.Attempt != 2 || filepath.Base(st.LogPath) != "runs.log" {
		t.Errorf("round trip: %v", st)
	}

	listCtrs := func(f *runtimeapi.ContainerFilter) string {
		t.Helper()
		r, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: f})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, ctr := range r.Containers {
			names = append(names, ctr.Metadata.Name)
		}
		return fmtList(names)
	}
	for name, tc := range map[string]struct {
		f    *runtimeapi.ContainerFilter
		want string
	}{
		"all":      {nil, "[runs waits]"},
		"by id":    {&runtimeapi.ContainerFilter{Id: waits}, "[waits]"},
		"by pod":   {&runtimeapi.ContainerFilter{PodSandboxId: a.PodSandboxId}, "[runs waits]"},
		"other":    {&runtimeapi.ContainerFilter{PodSandboxId: b.PodSandboxId}, "[]"},
		"exited":   {&runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_EXITED}}, "[runs]"},
		"created":  {&runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_CREATED}}, "[waits]"},
		"by label": {&runtimeapi.ContainerFilter{LabelSelector: map[string]string{"role": "side"}}, "[waits]"},
	} {
		if got := listCtrs(tc.f); got != tc.want {
			t.Errorf("ListContainers %s = %s, want %s", name, got, tc.want)
		}
	}
}

// fmtList compares lists as sorted text; the order is not the contract.
func fmtList(s []string) string {
	sort.Strings(s)
	return "[" + strings.Join(s, " ") + "]"
}

func TestErrorsCarryGRPCCodes(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	malformed := c.push(t, "malformed", []byte("\x00asm\x01\x00\x00\x00\x01\xff\xff"))

	_, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: "deadbeef"})
	wantCode(t, "PodSandboxStatus unknown", err, codes.NotFound)
	_, err = c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: "deadbeef"})
	wantCode(t, "StopPodSandbox unknown (idempotent)", err, codes.OK)
	_, err = c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: "deadbeef"})
	wantCode(t, "RemovePodSandbox unknown (idempotent)", err, codes.OK)
	_, err = c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "deadbeef"})
	wantCode(t, "ContainerStatus unknown", err, codes.NotFound)
	_, err = c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: "deadbeef"})
	wantCode(t, "StartContainer unknown", err, codes.NotFound)
	_, err = c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: "deadbeef"})
	wantCode(t, "StopContainer unknown (idempotent)", err, codes.OK)
	_, err = c.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: "deadbeef"})
	wantCode(t, "RemoveContainer unknown (idempotent)", err, codes.OK)
	_, err = c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: "deadbeef", Config: &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "x"}, Image: &runtimeapi.ImageSpec{Image: "x"}}})
	wantCode(t, "CreateContainer in unknown sandbox", err, codes.NotFound)

	_, err = c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{})
	wantCode(t, "RunPodSandbox without config", err, codes.InvalidArgument)
	_, err = c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("p", nil), RuntimeHandler: "runc"})
	wantCode(t, "RunPodSandbox unknown handler", err, codes.InvalidArgument)
	sb, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("p", nil)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("p", nil)})
	wantCode(t, "RunPodSandbox same name", err, codes.AlreadyExists)
	_, err = c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "x"}, Image: &runtimeapi.ImageSpec{Image: c.reg + "/never/pulled:1"}}})
	wantCode(t, "CreateContainer from an absent image", err, codes.NotFound)
	_, err = c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId})
	wantCode(t, "CreateContainer without config", err, codes.InvalidArgument)

	_, err = c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "Not A Ref"}})
	wantCode(t, "PullImage bad reference", err, codes.InvalidArgument)
	_, err = c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: c.reg + "/cri/absent:1"}})
	wantCode(t, "PullImage absent", err, codes.NotFound)
	_, err = c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: malformed}})
	wantCode(t, "PullImage malformed module", err, codes.InvalidArgument)
	_, err = c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: malformed}, Auth: &runtimeapi.AuthConfig{Auth: "%%%"}})
	wantCode(t, "PullImage bad auth encoding", err, codes.InvalidArgument)
	is, err := c.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: c.reg + "/cri/absent:1"}})
	if err != nil || is.Image != nil {
		t.Errorf("ImageStatus of an absent image = %v, %v; want no image, no error", is, err)
	}
	_, err = c.img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: c.reg + "/cri/absent:1"}})
	wantCode(t, "RemoveImage absent (idempotent)", err, codes.OK)
	_, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: "deadbeef", Cmd: []string{"x"}})
	wantCode(t, "ExecSync unknown", err, codes.NotFound)
	_, err = c.rt.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: "x"})
	wantCode(t, "CheckpointContainer (not for Wasm)", err, codes.Unimplemented)

	// The daemon is unharmed by all of the above.
	if _, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Fatal(err)
	}
}

func TestImageServiceWithAuth(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	reg := testregistry.StartWithBasicAuth(t, "bob", "pw")
	ref := reg + "/private/print:1"
	if err := imagebuild.Push(ctx, ref, imagebuild.BuildArtifact(testmodule.Wat(t, testmodule.Print), image.MediaTypeWasmConfigV0, image.MediaTypeWasmLayer),
		image.RegistryOptions{}, &image.Auth{Username: "bob", Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	wantCode(t, "pull without credentials", err, codes.Unauthenticated)
	for name, auth := range map[string]*runtimeapi.AuthConfig{
		"username/password": {Username: "bob", Password: "pw"},
		"auth":              {Auth: base64.StdEncoding.EncodeToString([]byte("bob:pw"))},
	} {
		r, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Auth: auth})
		if err != nil {
			t.Fatalf("pull with %s: %v", name, err)
		}
		if r.ImageRef == "" {
			t.Fatalf("pull with %s returned no image ref", name)
		}
	}
	list, err := c.img.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil || len(list.Images) != 1 || list.Images[0].RepoTags[0] != ref || list.Images[0].Size == 0 || len(list.Images[0].RepoDigests) != 1 {
		t.Fatalf("ListImages = %v, %v", list, err)
	}
	filtered, err := c.img.ListImages(ctx, &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: reg + "/other:1"}}})
	if err != nil || len(filtered.Images) != 0 {
		t.Fatalf("filtered ListImages = %v, %v", filtered, err)
	}
	fs, err := c.img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil || len(fs.ImageFilesystems) != 1 || fs.ImageFilesystems[0].UsedBytes.Value == 0 || fs.ImageFilesystems[0].InodesUsed.Value == 0 {
		t.Fatalf("ImageFsInfo = %v, %v", fs, err)
	}
	if _, err := c.img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: list.Images[0].Id}}); err != nil {
		t.Fatal(err)
	}
	after, _ := c.img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if after.ImageFilesystems[0].UsedBytes.Value >= fs.ImageFilesystems[0].UsedBytes.Value {
		t.Errorf("RemoveImage freed nothing: %d -> %d bytes", fs.ImageFilesystems[0].UsedBytes.Value, after.ImageFilesystems[0].UsedBytes.Value)
	}
}
