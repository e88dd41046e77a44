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
	return &runtimeapi.ContainerStatsResponse{Stats: criContainerStats(c, st)}, nil
}

// ListContainerStats reports the containers matching the filter.
func (s *Server) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	f := req.GetFilter()
	all := s.sandboxes.AllContainerStats(func(c *sandbox.Container) bool {
		return matchID(f.GetId(), c.ID) && matchID(f.GetPodSandboxId(), c.SandboxID) && matchLabels(f.GetLabelSelector(), c.Config.GetLabels())
	})
	resp := &runtimeapi.ListContainerStatsResponse{Stats: make([]*runtimeapi.ContainerStats, 0, len(all))}
	for _, cs := range all {
		resp.Stats = append(resp.Stats, criContainerStats(cs.Container, cs.Stats))
	}
	return resp, nil
}

func criContainerStats(c sandbox.Container, st sandbox.Stats) *runtimeapi.ContainerStats {
	ts := st.Timestamp.UnixNano()
	mem := &runtimeapi.MemoryUsage{
		Timestamp:       ts,
		WorkingSetBytes: &runtimeapi.UInt64Value{Value: uint64(st.MemoryBytes)},
		UsageBytes:      &runtimeapi.UInt64Value{Value: uint64(st.MemoryBytes)},
		RssBytes:        &runtimeapi.UInt64Value{Value: uint64(st.MemoryBytes)},
	}
	if limit := c.Resources.MemoryLimitBytes; limit > 0 {
		mem.AvailableBytes = &runtimeapi.UInt64Value{Value: uint64(max(limit-st.MemoryBytes, 0))}
	}
	return &runtimeapi.ContainerStats{
		Attributes: &runtimeapi.ContainerAttributes{
			Id:          c.ID,
			Metadata:    c.Config.GetMetadata(),
			Labels:      c.Config.GetLabels(),
			Annotations: c.Config.GetAnnotations(),
		},
		Cpu: &runtimeapi.CpuUsage{
			Timestamp:            ts,
			UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: uint64(st.CPU)},
			UsageNanoCores:       &runtimeapi.UInt64Value{Value: st.NanoCores},
		},
		Memory: mem,
		WritableLayer: &runtimeapi.FilesystemUsage{
			Timestamp:  ts,
			FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: st.RootDir},
			UsedBytes:  &runtimeapi.UInt64Value{Value: st.WritableBytes + st.LogBytes},
			InodesUsed: &runtimeapi.UInt64Value{Value: st.WritableInodes},
		},
	}
}

// PodSandboxStats reports a sandbox: the sum of its containers, and each.
func (s *Server) PodSandboxStats(ctx context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	sb, err := s.sandboxes.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	containers := s.sandboxes.AllContainerStats(func(c *sandbox.Container) bool { return c.SandboxID == sb.ID })
	return &runtimeapi.PodSandboxStatsResponse{Stats: sandboxStats(sb, containers)}, nil
}

// ListPodSandboxStats reports the sandboxes matching the filter.
func (s *Server) ListPodSandboxStats(ctx context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListPodSandboxStatsResponse{}
	bySandbox := s.statsBySandbox(false)
	for _, sb := range s.sandboxes.Sandboxes() {
		if !matchID(f.GetId(), sb.ID) || !matchLabels(f.GetLabelSelector(), sb.Config.GetLabels()) {
			continue
		}
		resp.Stats = append(resp.Stats, sandboxStats(sb, bySandbox[sb.ID]))
	}
	return resp, nil
}

// statsBySandbox measures every container once, grouped by sandbox; with
// each instance's finer figures when detailed.
func (s *Server) statsBySandbox(detailed bool) map[string][]sandbox.ContainerWithStats {
	all := s.sandboxes.AllContainerStats
	if detailed {
		all = s.sandboxes.AllContainerDetails
	}
	by := map[string][]sandbox.ContainerWithStats{}
	for _, cs := range all(func(*sandbox.Container) bool { return true }) {
		by[cs.SandboxID] = append(by[cs.SandboxID], cs)
	}
	return by
}

func sandboxStats(sb sandbox.Sandbox, containers []sandbox.ContainerWithStats) *runtimeapi.PodSandboxStats {
	linux := &runtimeapi.LinuxPodSandboxStats{}
	var cpu, nanoCores, mem uint64
	var running uint64
	var ts int64
	for _, cs := range containers {
		c, st := cs.Container, criContainerStats(cs.Container, cs.Stats)
		linux.Containers = append(linux.Containers, st)
		cpu += st.Cpu.UsageCoreNanoSeconds.Value
		nanoCores += st.Cpu.UsageNanoCores.Value
		mem += st.Memory.WorkingSetBytes.Value
		ts = max(ts, st.Cpu.Timestamp)
		if c.State == sandbox.ContainerRunning {
			running++
		}
	}
	linux.Cpu = &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: cpu}, UsageNanoCores: &runtimeapi.UInt64Value{Value: nanoCores}}
	linux.Memory = &runtimeapi.MemoryUsage{Timestamp: ts, WorkingSetBytes: &runtimeapi.UInt64Value{Value: mem}, UsageBytes: &runtimeapi.UInt64Value{Value: mem}}
	linux.Process = &runtimeapi.ProcessUsage{Timestamp: ts, ProcessCount: &runtimeapi.UInt64Value{Value: running}}
	return &runtimeapi.PodSandboxStats{
		Attributes: &runtimeapi.PodSandboxAttributes{
			Id:          sb.ID,
			Metadata:    sb.Config.GetMetadata(),
			Labels:      sb.Config.GetLabels(),
			Annotations: sb.Config.GetAnnotations(),
		},
		Linux: linux,
	}
}
