package cri

import (
	"context"

	"github.com/wasmcri/wasmcri/sandbox"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ContainerStats reports one container's CPU, memory and writable layer.
func (s *Server) ContainerStats(ctx context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	c, err := s.sandboxes.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	st, err := s.sandboxes.ContainerStats(c.ID)
	if err != nil {
		return nil, err
	}
	attrs, err := containerAttributes(&c)
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ContainerStatsResponse{}
	resp.ProtoReflect().SetUnknown(appendContainerStats(nil, containerStatsField, attrs, &c, &st))
	return resp, nil
}

// ListContainerStats reports the containers matching the filter, written
// straight to the wire (statswire.go).
func (s *Server) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListContainerStatsResponse{}
	p := s.containerAttributes.begin(f == nil)
	var err error
	s.sandboxes.EachContainerStats(func(c *sandbox.Container) bool {
		return err == nil && matchID(f.GetId(), c.ID) && matchID(f.GetPodSandboxId(), c.SandboxID) && matchLabels(f.GetLabelSelector(), c.Config.GetLabels())
	}, func(c *sandbox.Container, st *sandbox.Stats) {
		var attrs []byte
		if attrs, err = attributes(p, c, func() ([]byte, error) { return containerAttributes(c) }); err == nil {
			p.wire = appendContainerStats(p.wire, listStatsField, attrs, c, st)
		}
	})
	if err != nil {
		return nil, err
	}
	p.end(resp)
	return resp, nil
}

// attributes are an object's encoded attributes, from the cache or made
// now.
func attributes[K comparable](p *pass[K], id K, make func() ([]byte, error)) ([]byte, error) {
	if b, ok := p.get(id, 0); ok {
		return b, nil
	}
	b, err := make()
	if err == nil {
		p.put(id, 0, b)
	}
	return b, err
}

// PodSandboxStats reports a sandbox: the sum of its containers, and each.
func (s *Server) PodSandboxStats(ctx context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	sb, err := s.sandboxes.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	pods, err := s.podSums(false, func(c *sandbox.Container) bool { return c.SandboxID == sb.ID })
	if err != nil {
		return nil, err
	}
	attrs, err := sandboxAttributes(&sb)
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.PodSandboxStatsResponse{}
	resp.ProtoReflect().SetUnknown(appendPodStats(nil, podStatsField, attrs, pods[sb.ID]))
	return resp, nil
}

// ListPodSandboxStats reports the sandboxes matching the filter.
func (s *Server) ListPodSandboxStats(ctx context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListPodSandboxStatsResponse{}
	pods, err := s.podSums(true, func(*sandbox.Container) bool { return true })
	if err != nil {
		return nil, err
	}
	p := s.sandboxAttributes.begin(f == nil)
	s.sandboxes.EachSandbox(func(sb *sandbox.Sandbox) {
		if err != nil || !matchID(f.GetId(), sb.ID) || !matchLabels(f.GetLabelSelector(), sb.Config.GetLabels()) {
			return
		}
		var attrs []byte
		if attrs, err = attributes(p, sb, func() ([]byte, error) { return sandboxAttributes(sb) }); err == nil {
			p.wire = appendPodStats(p.wire, listPodStatsField, attrs, pods[sb.ID])
		}
	})
	if err != nil {
		return nil, err
	}
	p.end(resp)
	return resp, nil
}

// podSums measures every container keep accepts once, adding them up by
// sandbox; all says keep accepts every container.
func (s *Server) podSums(all bool, keep func(*sandbox.Container) bool) (map[string]*podSums, error) {
	by := map[string]*podSums{}
	var sums blocks[podSums]
	var err error
	p := s.containerAttributes.begin(all)
	defer p.finish()
	s.sandboxes.EachContainerStats(func(c *sandbox.Container) bool { return err == nil && keep(c) }, func(c *sandbox.Container, st *sandbox.Stats) {
		var attrs []byte
		if attrs, err = attributes(p, c, func() ([]byte, error) { return containerAttributes(c) }); err != nil {
			return
		}
		sum := by[c.SandboxID]
		if sum == nil {
			sum = sums.next()
			by[c.SandboxID] = sum
		}
		sum.add(c, st)
		sum.containers = appendContainerStats(sum.containers, linuxContainers, attrs, c, st)
	})
	return by, err
}
