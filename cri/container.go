package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/sandbox"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CreateContainer creates a container from a pulled Wasm image.
func (s *Server) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	if req.GetConfig() == nil {
		return nil, fmt.Errorf("CreateContainer: no config: %w", errdefs.ErrInvalidArgument)
	}
	c, err := s.sandboxes.CreateContainer(ctx, req.GetPodSandboxId(), req.GetConfig())
	if err != nil {
		return nil, err
	}
	return &runtimeapi.CreateContainerResponse{ContainerId: c.ID}, nil
}

// StartContainer runs a created container's module.
func (s *Server) StartContainer(ctx context.Context, req *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	if err := s.sandboxes.StartContainer(ctx, req.GetContainerId()); err != nil {
		return nil, err
	}
	return &runtimeapi.StartContainerResponse{}, nil
}

// StopContainer interrupts a running container.
func (s *Server) StopContainer(ctx context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	if err := s.sandboxes.StopContainer(req.GetContainerId(), time.Duration(req.GetTimeout())*time.Second); err != nil {
		return nil, err
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

// RemoveContainer removes a container, stopping it first if needed.
func (s *Server) RemoveContainer(ctx context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	if err := s.sandboxes.RemoveContainer(req.GetContainerId()); err != nil {
		return nil, err
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

// ListContainers lists containers matching the filter. Each container's
// entry is encoded once for each state it is in (encoded.go): all else it
// lists is fixed at its creation.
func (s *Server) ListContainers(ctx context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListContainersResponse{}
	p := s.containerEntries.begin(f == nil)
	var err error
	s.sandboxes.EachContainer(func(c *sandbox.Container) {
		state := containerState(c.State)
		if err != nil || !matchID(f.GetId(), c.ID) ||
			!matchID(f.GetPodSandboxId(), c.SandboxID) ||
			(f.GetState() != nil && f.GetState().GetState() != state) ||
			!matchLabels(f.GetLabelSelector(), c.Config.GetLabels()) {
			return
		}
		if wire, ok := p.get(c, int32(state)); ok {
			p.wire = append(p.wire, wire...)
			return
		}
		start := len(p.wire)
		p.wire, err = appendEntry(p.wire, containersField, &runtimeapi.Container{
			Id:           c.ID,
			PodSandboxId: c.SandboxID,
			Metadata:     c.Config.GetMetadata(),
			Image:        imageSpec(new(runtimeapi.ImageSpec), c),
			ImageRef:     c.ImageDigestRef,
			ImageId:      c.ImageID,
			State:        state,
			CreatedAt:    nanos(c.CreatedAt),
			Labels:       c.Config.GetLabels(),
			Annotations:  c.Config.GetAnnotations(),
		})
		if err == nil {
			p.put(c, int32(state), p.wire[start:])
		}
	})
	if err != nil {
		return nil, err
	}
	p.end(resp)
	return resp, nil
}

var containersField = field(&runtimeapi.ListContainersResponse{}, "containers")

// ContainerStatus reports one container.
func (s *Server) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	c, err := s.sandboxes.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: containerStatus(c)}
	if req.GetVerbose() {
		b, err := json.Marshal(c)
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"info": string(b)}
	}
	return resp, nil
}

func containerStatus(c sandbox.Container) *runtimeapi.ContainerStatus {
	return &runtimeapi.ContainerStatus{
		Id:          c.ID,
		Metadata:    c.Config.GetMetadata(),
		State:       containerState(c.State),
		CreatedAt:   nanos(c.CreatedAt),
		StartedAt:   nanos(c.StartedAt),
		FinishedAt:  nanos(c.FinishedAt),
		ExitCode:    c.ExitCode,
		Image:       imageSpec(new(runtimeapi.ImageSpec), &c),
		ImageRef:    c.ImageDigestRef,
		ImageId:     c.ImageID,
		Reason:      c.Reason,
		Message:     c.Message,
		Labels:      c.Config.GetLabels(),
		Annotations: c.Config.GetAnnotations(),
		Mounts:      c.Config.GetMounts(),
		LogPath:     c.LogPath,
		Resources:   c.Resources.CRI(),
	}
}

// UpdateContainerResources changes a container's memory and CPU limits.
func (s *Server) UpdateContainerResources(ctx context.Context, req *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	if err := s.sandboxes.UpdateResources(req.GetContainerId(), req.GetLinux()); err != nil {
		return nil, err
	}
	return &runtimeapi.UpdateContainerResourcesResponse{}, nil
}

// ReopenContainerLog starts a new log file after kubelet rotated the old.
func (s *Server) ReopenContainerLog(ctx context.Context, req *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	if err := s.sandboxes.ReopenLog(req.GetContainerId()); err != nil {
		return nil, err
	}
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}

// imageSpec fills in spec with the container's image, and returns it.
func imageSpec(spec *runtimeapi.ImageSpec, c *sandbox.Container) *runtimeapi.ImageSpec {
	*spec = runtimeapi.ImageSpec{
		Image:              c.ImageName,
		UserSpecifiedImage: c.Config.GetImage().GetUserSpecifiedImage(),
		RuntimeHandler:     c.Config.GetImage().GetRuntimeHandler(),
		Annotations:        c.Config.GetImage().GetAnnotations(),
	}
	return spec
}

func containerState(s sandbox.ContainerState) runtimeapi.ContainerState {
	switch s {
	case sandbox.ContainerCreated:
		return runtimeapi.ContainerState_CONTAINER_CREATED
	case sandbox.ContainerRunning:
		return runtimeapi.ContainerState_CONTAINER_RUNNING
	case sandbox.ContainerExited:
		return runtimeapi.ContainerState_CONTAINER_EXITED
	}
	return runtimeapi.ContainerState_CONTAINER_UNKNOWN
}
