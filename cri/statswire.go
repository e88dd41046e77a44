package cri

import (
	"encoding/binary"

	"github.com/wasmcri/wasmcri/sandbox"
	"google.golang.org/protobuf/encoding/protowire"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The stats answers, written straight to the wire (see encoded.go): per
// container a few numbers change each call; its attributes, encoded once,
// do not. Each function writes what the CRI messages built from the same
// figures would encode to (TestStatsWire decodes and compares); the field
// numbers come from the messages' descriptors.
var (
	containerStatsField = field(&runtimeapi.ContainerStatsResponse{}, "stats")
	listStatsField      = field(&runtimeapi.ListContainerStatsResponse{}, "stats")
	listPodStatsField   = field(&runtimeapi.ListPodSandboxStatsResponse{}, "stats")
	podStatsField       = field(&runtimeapi.PodSandboxStatsResponse{}, "stats")

	csAttributes = field(&runtimeapi.ContainerStats{}, "attributes")
	csCPU        = field(&runtimeapi.ContainerStats{}, "cpu")
	csMemory     = field(&runtimeapi.ContainerStats{}, "memory")
	csWritable   = field(&runtimeapi.ContainerStats{}, "writable_layer")

	psAttributes = field(&runtimeapi.PodSandboxStats{}, "attributes")
	psLinux      = field(&runtimeapi.PodSandboxStats{}, "linux")

	linuxCPU        = field(&runtimeapi.LinuxPodSandboxStats{}, "cpu")
	linuxMemory     = field(&runtimeapi.LinuxPodSandboxStats{}, "memory")
	linuxProcess    = field(&runtimeapi.LinuxPodSandboxStats{}, "process")
	linuxContainers = field(&runtimeapi.LinuxPodSandboxStats{}, "containers")

	cpuTimestamp = field(&runtimeapi.CpuUsage{}, "timestamp")
	cpuCoreNanos = field(&runtimeapi.CpuUsage{}, "usage_core_nano_seconds")
	cpuNanoCores = field(&runtimeapi.CpuUsage{}, "usage_nano_cores")

	memTimestamp  = field(&runtimeapi.MemoryUsage{}, "timestamp")
	memWorkingSet = field(&runtimeapi.MemoryUsage{}, "working_set_bytes")
	memAvailable  = field(&runtimeapi.MemoryUsage{}, "available_bytes")
	memUsage      = field(&runtimeapi.MemoryUsage{}, "usage_bytes")
	memRSS        = field(&runtimeapi.MemoryUsage{}, "rss_bytes")

	processTimestamp = field(&runtimeapi.ProcessUsage{}, "timestamp")
	processCount     = field(&runtimeapi.ProcessUsage{}, "process_count")

	fsTimestamp  = field(&runtimeapi.FilesystemUsage{}, "timestamp")
	fsID         = field(&runtimeapi.FilesystemUsage{}, "fs_id")
	fsUsed       = field(&runtimeapi.FilesystemUsage{}, "used_bytes")
	fsInodes     = field(&runtimeapi.FilesystemUsage{}, "inodes_used")
	fsMountpoint = field(&runtimeapi.FilesystemIdentifier{}, "mountpoint")

	uint64Value = field(&runtimeapi.UInt64Value{}, "value")
)

// containerAttributes is the container's attributes as field csAttributes
// of its stats.
func containerAttributes(c *sandbox.Container) ([]byte, error) {
	return appendEntry(nil, csAttributes, &runtimeapi.ContainerAttributes{
		Id:          c.ID,
		Metadata:    c.Config.GetMetadata(),
		Labels:      c.Config.GetLabels(),
		Annotations: c.Config.GetAnnotations(),
	})
}

// sandboxAttributes is the sandbox's attributes as field psAttributes of
// its stats.
func sandboxAttributes(sb *sandbox.Sandbox) ([]byte, error) {
	return appendEntry(nil, psAttributes, &runtimeapi.PodSandboxAttributes{
		Id:          sb.ID,
		Metadata:    sb.Config.GetMetadata(),
		Labels:      sb.Config.GetLabels(),
		Annotations: sb.Config.GetAnnotations(),
	})
}

// appendContainerStats appends field f holding the container's stats;
// attrs are from containerAttributes.
func appendContainerStats(b []byte, f protowire.Number, attrs []byte, c *sandbox.Container, st *sandbox.Stats) []byte {
	ts := st.Timestamp.UnixNano()
	mem := uint64(st.MemoryBytes)
	var scratch [512]byte
	u, cpu := openMessage(scratch[:0], csCPU)
	u = appendInt64(u, cpuTimestamp, ts)
	u = appendUInt64Value(u, cpuCoreNanos, uint64(st.CPU))
	u = appendUInt64Value(u, cpuNanoCores, st.NanoCores)
	u, memory := openMessage(closeMessage(u, cpu), csMemory)
	u = appendInt64(u, memTimestamp, ts)
	u = appendUInt64Value(u, memWorkingSet, mem)
	if limit := c.Resources.MemoryLimitBytes; limit > 0 {
		u = appendUInt64Value(u, memAvailable, uint64(max(limit-st.MemoryBytes, 0)))
	}
	u = appendUInt64Value(u, memUsage, mem)
	u = appendUInt64Value(u, memRSS, mem)
	u, fs := openMessage(closeMessage(u, memory), csWritable)
	u = appendInt64(u, fsTimestamp, ts)
	u, id := openMessage(u, fsID)
	u = closeMessage(appendString(u, fsMountpoint, st.RootDir), id)
	u = appendUInt64Value(u, fsUsed, st.WritableBytes+st.LogBytes)
	u = appendUInt64Value(u, fsInodes, st.WritableInodes)
	return appendParts(b, f, attrs, closeMessage(u, fs))
}

// podSums are a sandbox's containers' figures added up, and their stats
// as encoded by appendContainerStats (field linuxContainers).
type podSums struct {
	cpu, nanoCores, memory, running uint64
	timestamp                       int64
	containers                      []byte
}

func (p *podSums) add(c *sandbox.Container, st *sandbox.Stats) {
	p.cpu += uint64(st.CPU)
	p.nanoCores += st.NanoCores
	p.memory += uint64(st.MemoryBytes)
	p.timestamp = max(p.timestamp, st.Timestamp.UnixNano())
	if c.State == sandbox.ContainerRunning {
		p.running++
	}
}

// appendPodStats appends field f holding a sandbox's stats: the sum of
// its containers, and each. attrs are from sandboxAttributes; p may be
// nil (no containers).
func appendPodStats(b []byte, f protowire.Number, attrs []byte, p *podSums) []byte {
	if p == nil {
		p = &podSums{}
	}
	var scratch [256]byte
	s, cpu := openMessage(scratch[:0], linuxCPU)
	s = appendInt64(s, cpuTimestamp, p.timestamp)
	s = appendUInt64Value(s, cpuCoreNanos, p.cpu)
	s = appendUInt64Value(s, cpuNanoCores, p.nanoCores)
	s, memory := openMessage(closeMessage(s, cpu), linuxMemory)
	s = appendInt64(s, memTimestamp, p.timestamp)
	s = appendUInt64Value(s, memWorkingSet, p.memory)
	s = appendUInt64Value(s, memUsage, p.memory)
	s, process := openMessage(closeMessage(s, memory), linuxProcess)
	s = appendInt64(s, processTimestamp, p.timestamp)
	s = closeMessage(appendUInt64Value(s, processCount, p.running), process)
	var head [2 * binary.MaxVarintLen64]byte
	linux := protowire.AppendTag(head[:0], psLinux, protowire.BytesType)
	linux = protowire.AppendVarint(linux, uint64(len(s)+len(p.containers)))
	return appendParts(b, f, attrs, linux, s, p.containers)
}

// appendParts appends field f holding a message made of parts, laid end
// to end: large parts are written once, where closeMessage would move them
// along to make room for the length.
func appendParts(b []byte, f protowire.Number, parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b = protowire.AppendVarint(protowire.AppendTag(b, f, protowire.BytesType), uint64(n))
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// openMessage appends the tag of field f, a message, whose fields follow;
// closeMessage, given what openMessage returned, puts the message's length
// before them.
func openMessage(b []byte, f protowire.Number) ([]byte, int) {
	b = protowire.AppendTag(b, f, protowire.BytesType)
	return b, len(b)
}

func closeMessage(b []byte, at int) []byte {
	n := uint64(len(b) - at)
	// Make room for the length and move the fields on: they are few.
	w := protowire.SizeVarint(n)
	b = append(b, make([]byte, w)...)
	copy(b[at+w:], b[at:len(b)-w])
	protowire.AppendVarint(b[at:at], n)
	return b
}

// appendInt64 and appendString leave out a zero value, as proto3 does.
func appendInt64(b []byte, f protowire.Number, v int64) []byte {
	if v == 0 {
		return b
	}
	return protowire.AppendVarint(protowire.AppendTag(b, f, protowire.VarintType), uint64(v))
}

func appendString(b []byte, f protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return protowire.AppendString(protowire.AppendTag(b, f, protowire.BytesType), s)
}

// appendUInt64Value appends a UInt64Value, present even when 0.
func appendUInt64Value(b []byte, f protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, f, protowire.BytesType)
	if v == 0 {
		return protowire.AppendVarint(b, 0)
	}
	b = protowire.AppendVarint(b, uint64(protowire.SizeTag(uint64Value)+protowire.SizeVarint(v)))
	return protowire.AppendVarint(protowire.AppendTag(b, uint64Value, protowire.VarintType), v)
}
