package cri

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/sandbox"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RunPodSandbox creates a ready Wasm sandbox.
func (s *Server) RunPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	if req.GetConfig() == nil {
		return nil, fmt.Errorf("RunPodSandbox: no config: %w", errdefs.ErrInvalidArgument)
	}
	sb, err := s.sandboxes.RunSandbox(ctx, req.GetConfig(), req.GetRuntimeHandler())
	if err != nil {
		return nil, err
	}
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: sb.ID}, nil
}

// StopPodSandbox ends every container of the sandbox.
func (s *Server) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	if err := s.sandboxes.StopSandbox(ctx, req.GetPodSandboxId()); err != nil {
		return nil, err
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

// RemovePodSandbox removes the sandbox and its containers.
func (s *Server) RemovePodSandbox(ctx context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	if err := s.sandboxes.RemoveSandbox(ctx, req.GetPodSandboxId()); err != nil {
		return nil, err
	}
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

// PodSandboxStatus reports one sandbox.
func (s *Server) PodSandboxStatus(ctx context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	sb, err := s.sandboxes.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: sandboxStatus(sb)}
	if req.GetVerbose() {
		b, err := json.Marshal(sb)
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"info": string(b)}
	}
	return resp, nil
}

func sandboxStatus(sb sandbox.Sandbox) *runtimeapi.PodSandboxStatus {
	return &runtimeapi.PodSandboxStatus{
		Id:          sb.ID,
		Metadata:    sb.Config.GetMetadata(),
		State:       sandboxState(sb.State),
		CreatedAt:   nanos(sb.CreatedAt),
		Network:     networkStatus(sb),
		Labels:      sb.Config.GetLabels(),
		Annotations: sb.Config.GetAnnotations(),
		// kubelet compares the namespace options with the pod's to decide
		// whether the sandbox must be recreated; report what was asked.
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{
			Options: sb.Config.GetLinux().GetSecurityContext().GetNamespaceOptions(),
		}},
		RuntimeHandler: sb.RuntimeHandler,
	}
}

// networkStatus is the pod's addresses on the pod network; none for a pod
// on the node's network or one taken off the pod network by its stop (an
// empty IP on a ready sandbox makes kubelet recreate it).
func networkStatus(sb sandbox.Sandbox) *runtimeapi.PodSandboxNetworkStatus {
	if len(sb.IPs) == 0 || sb.NetworkDetached {
		return nil
	}
	st := &runtimeapi.PodSandboxNetworkStatus{Ip: sb.IPs[0]}
	for _, ip := range sb.IPs[1:] {
		st.AdditionalIps = append(st.AdditionalIps, &runtimeapi.PodIP{Ip: ip})
	}
	return st
}

// ListPodSandbox lists sandboxes matching the filter. Each sandbox's
// entry is encoded once for each state it is in (encoded.go): all else it
// lists is fixed at its creation.
func (s *Server) ListPodSandbox(ctx context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListPodSandboxResponse{}
	p := s.sandboxEntries.begin(f == nil)
	var err error
	s.sandboxes.EachSandbox(func(sb *sandbox.Sandbox) {
		state := sandboxState(sb.State)
		if err != nil || !matchID(f.GetId(), sb.ID) ||
			(f.GetState() != nil && f.GetState().GetState() != state) ||
			!matchLabels(f.GetLabelSelector(), sb.Config.GetLabels()) {
			return
		}
		if wire, ok := p.get(sb, int32(state)); ok {
			p.wire = append(p.wire, wire...)
			return
		}
		start := len(p.wire)
		p.wire, err = appendEntry(p.wire, sandboxItemsField, &runtimeapi.PodSandbox{
			Id:             sb.ID,
			Metadata:       sb.Config.GetMetadata(),
			State:          state,
			CreatedAt:      nanos(sb.CreatedAt),
			Labels:         sb.Config.GetLabels(),
			Annotations:    sb.Config.GetAnnotations(),
			RuntimeHandler: sb.RuntimeHandler,
		})
		if err == nil {
			p.put(sb, int32(state), p.wire[start:])
		}
	})
	if err != nil {
		return nil, err
	}
	p.end(resp)
	return resp, nil
}

var sandboxItemsField = field(&runtimeapi.ListPodSandboxResponse{}, "items")

func sandboxState(s sandbox.SandboxState) runtimeapi.PodSandboxState {
	if s == sandbox.SandboxReady {
		return runtimeapi.PodSandboxState_SANDBOX_READY
	}
	return runtimeapi.PodSandboxState_SANDBOX_NOTREADY
}
