package cri_test

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/wasmcri/wasmcri/config"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func hostNetworkPod(name string) *runtimeapi.PodSandboxConfig {
	cfg := podConfig(name, nil)
	cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}}
	return cfg
}

// PodSandboxStatus reports a pod's address on the pod network while it is
// attached, and none for a pod on the node's network or a stopped pod (a
// ready sandbox with an empty IP would make kubelet recreate it).
func TestPodSandboxStatusReportsTheIP(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	sb, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("web", nil)})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.PodSandboxId})
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(st.GetStatus().GetNetwork().GetIp()); ip == nil || ip.To4() == nil || !strings.HasPrefix(ip.String(), "10.251.") {
		t.Fatalf("network status %v", st.GetStatus().GetNetwork())
	}
	host, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: hostNetworkPod("host")})
	if err != nil {
		t.Fatal(err)
	}
	hst, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: host.PodSandboxId})
	if err != nil || hst.GetStatus().GetNetwork() != nil || hst.GetStatus().GetLinux().GetNamespaces().GetOptions().GetNetwork() != runtimeapi.NamespaceMode_NODE {
		t.Fatalf("host-network pod: %v, %v", hst.GetStatus(), err)
	}
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId}); err != nil {
		t.Fatal(err)
	}
	st, err = c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.PodSandboxId})
	if err != nil || st.GetStatus().GetNetwork() != nil {
		t.Fatalf("stopped pod: %v, %v", st.GetStatus().GetNetwork(), err)
	}
	for _, id := range []string{sb.PodSandboxId, host.PodSandboxId} {
		if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
	}
}

// Without CNI plugins the network is not ready, saying why; a pod on the
// pod network is refused with FailedPrecondition, one on the node's runs.
func TestNetworkNotReadyWithoutPlugins(t *testing.T) {
	c := startWith(t, func(cfg *config.Config) { cfg.Network.CNIBinDirs = []string{t.TempDir()} }, io.Discard)
	ctx := context.Background()
	st, err := c.rt.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var network *runtimeapi.RuntimeCondition
	for _, cond := range st.Status.Conditions {
		if cond.Type == runtimeapi.NetworkReady {
			network = cond
		}
	}
	if network == nil || network.Status || network.Reason != "NetworkPluginNotReady" || !strings.Contains(network.Message, "plugin") {
		t.Fatalf("NetworkReady condition: %v", network)
	}
	_, err = c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("web", nil)})
	wantCode(t, "RunPodSandbox on the pod network", err, codes.FailedPrecondition)
	if _, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: hostNetworkPod("host")}); err != nil {
		t.Fatalf("a host-network pod: %v", err)
	}
}
