package cri

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	// RuntimeName is what Version reports.
	RuntimeName = "wasmcri"
	// kubeAPIVersion is the CRI API version string runtimes report.
	kubeAPIVersion = "0.1.0"
)

// Version reports the runtime's name and versions.
func (s *Server) Version(ctx context.Context, req *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version:           kubeAPIVersion,
		RuntimeName:       RuntimeName,
		RuntimeVersion:    semanticVersion(s.info.Version),
		RuntimeApiVersion: "v1",
	}, nil
}

// semVer is a semantic version (semver.org), which kubelet parses the
// runtime version as; anything else shows on the node as "Unknown".
var semVer = regexp.MustCompile(`^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// semanticVersion is the build's version as a semantic version: a tag
// (v1.2.3, or v1.2.3-4-gabcdef past it) as it is, without its "v"; an
// untagged build (a commit, maybe -dirty) as a 0.0.0 pre-release that
// carries the commit as build metadata.
func semanticVersion(v string) string {
	if s := strings.TrimPrefix(v, "v"); semVer.MatchString(s) {
		return s
	}
	// Build metadata is dot-separated non-empty [0-9A-Za-z-] identifiers.
	ids := strings.FieldsFunc(v, func(r rune) bool {
		return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-')
	})
	if len(ids) == 0 {
		return "0.0.0-dev"
	}
	return "0.0.0-dev+" + strings.Join(ids, ".")
}

// Status reports the runtime ready, and the network ready while pods can
// join the pod network (kubelet holds a node NotReady while it is not).
func (s *Server) Status(ctx context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	network := &runtimeapi.RuntimeCondition{Type: runtimeapi.NetworkReady, Status: true}
	if err := s.sandboxes.NetworkStatus(); err != nil {
		network.Status, network.Reason, network.Message = false, "NetworkPluginNotReady", err.Error()
	}
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true}, network,
		}},
	}
	caps := &runtimeapi.RuntimeCondition{Type: "CPUQuotaEnforced", Status: true}
	if err := s.sandboxes.CPUCapsUnavailable(); err != nil {
		caps.Status, caps.Reason, caps.Message = false, "NoCgroupCPUController", err.Error()
	}
	resp.Status.Conditions = append(resp.Status.Conditions, caps)
	// The default handler is listed under "" too: kubelet asks for the
	// features of the handler a pod names, and most pods name none.
	handlers := s.info.Handlers
	if len(handlers) > 0 {
		handlers = append([]string{""}, handlers...)
	}
	for _, h := range handlers {
		resp.RuntimeHandlers = append(resp.RuntimeHandlers, &runtimeapi.RuntimeHandler{
			Name: h,
			// A read-only preopen is read-only all the way down.
			Features: &runtimeapi.RuntimeHandlerFeatures{RecursiveReadOnlyMounts: true},
		})
	}
	if req.GetVerbose() {
		b, err := json.Marshal(s.info.Config)
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"config": string(b)}
	}
	return resp, nil
}

// RuntimeConfig tells kubelet the cgroup driver to use.
func (s *Server) RuntimeConfig(ctx context.Context, req *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	driver := runtimeapi.CgroupDriver_CGROUPFS
	if s.info.CgroupDriver == "systemd" {
		driver = runtimeapi.CgroupDriver_SYSTEMD
	}
	return &runtimeapi.RuntimeConfigResponse{Linux: &runtimeapi.LinuxRuntimeConfiguration{CgroupDriver: driver}}, nil
}

// UpdateRuntimeConfig accepts kubelet's pod CIDR; Wasm pods have no pod
// network to configure with it.
func (s *Server) UpdateRuntimeConfig(ctx context.Context, req *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	s.log.Info("runtime config updated", "pod_cidr", req.GetRuntimeConfig().GetNetworkConfig().GetPodCidr())
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}
