package cri

import (
	"github.com/wasmcri/wasmcri/sandbox"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var eventTypes = map[sandbox.EventType]runtimeapi.ContainerEventType{
	sandbox.ContainerCreatedEvent: runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT,
	sandbox.ContainerStartedEvent: runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT,
	sandbox.ContainerStoppedEvent: runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT,
	sandbox.ContainerDeletedEvent: runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT,
}

// GetContainerEvents streams container lifecycle events (kubelet's evented
// PLEG) until the client goes away.
func (s *Server) GetContainerEvents(req *runtimeapi.GetEventsRequest, stream grpc.ServerStreamingServer[runtimeapi.ContainerEventResponse]) error {
	events, cancel := s.sandboxes.Subscribe()
	defer cancel()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			resp := &runtimeapi.ContainerEventResponse{
				ContainerId:        ev.ContainerID,
				ContainerEventType: eventTypes[ev.Type],
				CreatedAt:          ev.At.UnixNano(),
				ContainersStatuses: []*runtimeapi.ContainerStatus{containerStatus(ev.Container)},
			}
			if sb, err := s.sandboxes.Sandbox(ev.SandboxID); err == nil {
				resp.PodSandboxStatus = sandboxStatus(sb)
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
}
