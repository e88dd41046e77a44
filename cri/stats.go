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
	return &runtimeapi.ContainerStatsResponse{Stats: criContainerStats(new(statsMsgs), &c, &st)}, nil
}

// ListContainerStats reports the containers matching the filter.
func (s *Server) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListContainerStatsResponse{}
	var msgs blocks[statsMsgs]
	s.sandboxes.EachContainerStats(func(c *sandbox.Container) bool {
		return matchID(f.GetId(), c.ID) && matchID(f.GetPodSandboxId(), c.SandboxID) && matchLabels(f.GetLabelSelector(), c.Config.GetLabels())
	}, func(c *sandbox.Container, st *sandbox.Stats) {
		resp.Stats = append(resp.Stats, criContainerStats(msgs.next(), c, st))
	})
	return resp, nil
}

// statsMsgs are the messages of one container's stats, allocated
// together.
type statsMsgs struct {
	stats  runtimeapi.ContainerStats
	attrs  runtimeapi.ContainerAttributes
	cpu    runtimeapi.CpuUsage
	memory runtimeapi.MemoryUsage
	fs     runtimeapi.FilesystemUsage
	fsID   runtimeapi.FilesystemIdentifier
	values [8]runtimeapi.UInt64Value
}

// criContainerStats fills in m with the container's figures.
func criContainerStats(m *statsMsgs, c *sandbox.Container, st *sandbox.Stats) *runtimeapi.ContainerStats {
	ts := st.Timestamp.UnixNano()
	v := m.values[:0]
	value := func(n uint64) *runtimeapi.UInt64Value {
		v = append(v, runtimeapi.UInt64Value{Value: n})
		return &v[len(v)-1]
	}
	mem := uint64(st.MemoryBytes)
	m.memory = runtimeapi.MemoryUsage{
		Timestamp:       ts,
		WorkingSetBytes: value(mem),
		UsageBytes:      value(mem),
		RssBytes:        value(mem),
	}
	if limit := c.Resources.MemoryLimitBytes; limit > 0 {
		m.memory.AvailableBytes = value(uint64(max(limit-st.MemoryBytes, 0)))
	}
	m.attrs = runtimeapi.ContainerAttributes{
		Id:          c.ID,
		Metadata:    c.Config.GetMetadata(),
		Labels:      c.Config.GetLabels(),
		Annotations: c.Config.GetAnnotations(),
	}
	m.cpu = runtimeapi.CpuUsage{
		Timestamp:            ts,
		UsageCoreNanoSeconds: value(uint64(st.CPU)),
		UsageNanoCores:       value(st.NanoCores),
	}
	m.fsID = runtimeapi.FilesystemIdentifier{Mountpoint: st.RootDir}
	m.fs = runtimeapi.FilesystemUsage{
		Timestamp:  ts,
		FsId:       &m.fsID,
		UsedBytes:  value(st.WritableBytes + st.LogBytes),
		InodesUsed: value(st.WritableInodes),
	}
	m.stats = runtimeapi.ContainerStats{Attributes: &m.attrs, Cpu: &m.cpu, Memory: &m.memory, WritableLayer: &m.fs}
	return &m.stats
}

// PodSandboxStats reports a sandbox: the sum of its containers, and each.
func (s *Server) PodSandboxStats(ctx context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	sb, err := s.sandboxes.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	pods := s.podContainerStats(func(c *sandbox.Container) bool { return c.SandboxID == sb.ID })
	return &runtimeapi.PodSandboxStatsResponse{Stats: sandboxStats(&sb, pods[sb.ID])}, nil
}

// ListPodSandboxStats reports the sandboxes matching the filter.
func (s *Server) ListPodSandboxStats(ctx context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	f := req.GetFilter()
	resp := &runtimeapi.ListPodSandboxStatsResponse{}
	pods := s.podContainerStats(func(*sandbox.Container) bool { return true })
	s.sandboxes.EachSandbox(func(sb *sandbox.Sandbox) {
		if matchID(f.GetId(), sb.ID) && matchLabels(f.GetLabelSelector(), sb.Config.GetLabels()) {
			resp.Stats = append(resp.Stats, sandboxStats(sb, pods[sb.ID]))
		}
	})
	return resp, nil
}

// podContainers are a sandbox's containers' stats, and how many of them
// run.
type podContainers struct {
	stats   []*runtimeapi.ContainerStats
	running uint64
}

// podContainerStats measures every container keep accepts once, grouped
// by sandbox.
func (s *Server) podContainerStats(keep func(*sandbox.Container) bool) map[string]*podContainers {
	by := map[string]*podContainers{}
	var msgs blocks[statsMsgs]
	var pods blocks[podContainers]
	s.sandboxes.EachContainerStats(keep, func(c *sandbox.Container, st *sandbox.Stats) {
		p := by[c.SandboxID]
		if p == nil {
			p = pods.next()
			by[c.SandboxID] = p
		}
		p.stats = append(p.stats, criContainerStats(msgs.next(), c, st))
		if c.State == sandbox.ContainerRunning {
			p.running++
		}
	})
	return by
}

// sandboxMsgs are the messages of one sandbox's stats, allocated
// together.
type sandboxMsgs struct {
	stats   runtimeapi.PodSandboxStats
	attrs   runtimeapi.PodSandboxAttributes
	linux   runtimeapi.LinuxPodSandboxStats
	cpu     runtimeapi.CpuUsage
	memory  runtimeapi.MemoryUsage
	process runtimeapi.ProcessUsage
	values  [5]runtimeapi.UInt64Value
}

func sandboxStats(sb *sandbox.Sandbox, pod *podContainers) *runtimeapi.PodSandboxStats {
	if pod == nil {
		pod = &podContainers{}
	}
	m := new(sandboxMsgs)
	var cpu, nanoCores, mem uint64
	var ts int64
	for _, st := range pod.stats {
		cpu += st.Cpu.UsageCoreNanoSeconds.Value
		nanoCores += st.Cpu.UsageNanoCores.Value
		mem += st.Memory.WorkingSetBytes.Value
		ts = max(ts, st.Cpu.Timestamp)
	}
	m.values = [5]runtimeapi.UInt64Value{{Value: cpu}, {Value: nanoCores}, {Value: mem}, {Value: mem}, {Value: pod.running}}
	m.cpu = runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: &m.values[0], UsageNanoCores: &m.values[1]}
	m.memory = runtimeapi.MemoryUsage{Timestamp: ts, WorkingSetBytes: &m.values[2], UsageBytes: &m.values[3]}
	m.process = runtimeapi.ProcessUsage{Timestamp: ts, ProcessCount: &m.values[4]}
	m.linux = runtimeapi.LinuxPodSandboxStats{Cpu: &m.cpu, Memory: &m.memory, Process: &m.process, Containers: pod.stats}
	m.attrs = runtimeapi.PodSandboxAttributes{
		Id:          sb.ID,
		Metadata:    sb.Config.GetMetadata(),
		Labels:      sb.Config.GetLabels(),
		Annotations: sb.Config.GetAnnotations(),
	}
	m.stats = runtimeapi.PodSandboxStats{Attributes: &m.attrs, Linux: &m.linux}
	return &m.stats
}
