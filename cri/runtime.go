package cri

import (
	"context"
	"encoding/json"

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
		RuntimeVersion:    s.info.Version,
		RuntimeApiVersion: "v1",
	}, nil
}

// Status reports the runtime ready. The network is ready too: Wasm pods
// need no CNI network, and kubelet holds a node NotReady while
// NetworkReady is false.
func (s *Server) Status(ctx context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true},
			{Type: runtimeapi.NetworkReady, Status: true},
		}},
	}
	for _, h := range s.info.Handlers {
		resp.RuntimeHandlers = append(resp.RuntimeHandlers, &runtimeapi.RuntimeHandler{
			Name:     h,
			Features: &runtimeapi.RuntimeHandlerFeatures{},
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
