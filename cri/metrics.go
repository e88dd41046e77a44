package cri

import (
	"context"
	"time"

	"github.com/wasmcri/wasmcri/sandbox"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The container metrics of ListPodSandboxMetrics, under cadvisor's names so
// that kubelet can serve them as it serves cadvisor's. Each is measured,
// or is zero because a Wasm instance has none of it: no network, no block
// devices, no swap, no page cache of its own.
var metricLabels = []string{"container", "id", "image", "name", "namespace", "pod"}

type metricSource struct {
	sandbox.ContainerWithStats
	fs unix.Statfs_t
}

type metric struct {
	name, help string
	kind       runtimeapi.MetricType
	value      func(m *metricSource) uint64
}

func zero(*metricSource) uint64 { return 0 }

func seconds(d time.Duration) uint64 { return uint64(d / time.Second) }

var containerMetrics = []metric{
	{"container_blkio_device_usage_total", "Bytes read and written on block devices: a Wasm instance has none.", runtimeapi.MetricType_COUNTER, zero},
	{"container_cpu_cfs_periods_total", "CFS enforcement periods of the container's CPU cap.", runtimeapi.MetricType_COUNTER, func(m *metricSource) uint64 { return m.Stats.Instance.CFS.Periods }},
	{"container_cpu_cfs_throttled_periods_total", "CFS periods in which the container was throttled.", runtimeapi.MetricType_COUNTER, func(m *metricSource) uint64 { return m.Stats.Instance.CFS.ThrottledPeriods }},
	{"container_cpu_cfs_throttled_seconds_total", "Seconds the container was throttled by its CPU cap.", runtimeapi.MetricType_COUNTER, func(m *metricSource) uint64 { return seconds(m.Stats.Instance.CFS.ThrottledTime) }},
	{"container_cpu_system_seconds_total", "System CPU seconds of the container's instance thread.", runtimeapi.MetricType_COUNTER, func(m *metricSource) uint64 { return seconds(m.Stats.Instance.System) }},
	{"container_cpu_usage_seconds_total", "CPU seconds of the container's instance thread.", runtimeapi.MetricType_COUNTER, func(m *metricSource) uint64 { return seconds(m.Stats.CPU) }},
	{"container_cpu_user_seconds_total", "User CPU seconds of the container's instance thread.", runtimeapi.MetricType_COUNTER, func(m *metricSource) uint64 { return seconds(m.Stats.Instance.User) }},
	{"container_file_descriptors", "Host file descriptors the instance was given: standard I/O and preopened directories.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 {
		if m.State != sandbox.ContainerRunning {
			return 0
		}
		return uint64(3 + 1 + len(m.Config.GetMounts()))
	}},
	{"container_fs_inodes_free", "Free inodes of the filesystem holding the container's root.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return m.fs.Ffree }},
	{"container_fs_inodes_total", "Inodes of the filesystem holding the container's root.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return m.fs.Files }},
	{"container_fs_limit_bytes", "Bytes the filesystem holding the container's root can hold.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return m.fs.Blocks * uint64(m.fs.Bsize) }},
	{"container_fs_reads_bytes_total", "Bytes read from block devices: not accounted per Wasm instance.", runtimeapi.MetricType_COUNTER, zero},
	{"container_fs_reads_total", "Reads from block devices: not accounted per Wasm instance.", runtimeapi.MetricType_COUNTER, zero},
	{"container_fs_usage_bytes", "Bytes of the container's writable root and log.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return m.Stats.WritableBytes + m.Stats.LogBytes }},
	{"container_fs_writes_bytes_total", "Bytes written to block devices: not accounted per Wasm instance.", runtimeapi.MetricType_COUNTER, zero},
	{"container_fs_writes_total", "Writes to block devices: not accounted per Wasm instance.", runtimeapi.MetricType_COUNTER, zero},
	{"container_last_seen", "When these figures were taken, in Unix seconds.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return uint64(m.Stats.Timestamp.Unix()) }},
	{"container_memory_cache", "Page cache of the container: a Wasm instance has none of its own.", runtimeapi.MetricType_GAUGE, zero},
	{"container_memory_failcnt", "Times the memory limit was hit.", runtimeapi.MetricType_COUNTER, oomCount},
	{"container_memory_failures_total", "Memory allocation failures at the limit.", runtimeapi.MetricType_COUNTER, oomCount},
	{"container_memory_kernel_usage", "Kernel memory charged to the container: none is, for a Wasm instance.", runtimeapi.MetricType_GAUGE, zero},
	{"container_memory_mapped_file", "Memory-mapped files of the container: none, for a Wasm instance.", runtimeapi.MetricType_GAUGE, zero},
	{"container_memory_max_usage_bytes", "Largest linear memory the instance has had.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return uint64(m.Stats.Instance.MaxMemoryBytes) }},
	{"container_memory_rss", "Linear memory of the instance.", runtimeapi.MetricType_GAUGE, memory},
	{"container_memory_swap", "Swap used by the container: none, for a Wasm instance.", runtimeapi.MetricType_GAUGE, zero},
	{"container_memory_usage_bytes", "Linear memory of the instance.", runtimeapi.MetricType_GAUGE, memory},
	{"container_memory_working_set_bytes", "Linear memory of the instance.", runtimeapi.MetricType_GAUGE, memory},
	{"container_network_receive_bytes_total", "Bytes received: a Wasm pod has no network of its own.", runtimeapi.MetricType_COUNTER, zero},
	{"container_network_receive_errors_total", "Receive errors: a Wasm pod has no network of its own.", runtimeapi.MetricType_COUNTER, zero},
	{"container_network_receive_packets_dropped_total", "Received packets dropped: a Wasm pod has no network of its own.", runtimeapi.MetricType_COUNTER, zero},
	{"container_network_receive_packets_total", "Packets received: a Wasm pod has no network of its own.", runtimeapi.MetricType_COUNTER, zero},
	{"container_network_transmit_bytes_total", "Bytes sent: a Wasm pod has no network of its own.", runtimeapi.MetricType_COUNTER, zero},
	{"container_network_transmit_errors_total", "Send errors: a Wasm pod has no network of its own.", runtimeapi.MetricType_COUNTER, zero},
	{"container_network_transmit_packets_dropped_total", "Sent packets dropped: a Wasm pod has no network of its own.", runtimeapi.MetricType_COUNTER, zero},
	{"container_network_transmit_packets_total", "Packets sent: a Wasm pod has no network of its own.", runtimeapi.MetricType_COUNTER, zero},
	{"container_oom_events_total", "Times the container was OOM-killed.", runtimeapi.MetricType_COUNTER, oomCount},
	{"container_processes", "Instances running in the container.", runtimeapi.MetricType_GAUGE, running},
	{"container_sockets", "Open sockets: a Wasm instance cannot open any.", runtimeapi.MetricType_GAUGE, zero},
	{"container_spec_cpu_period", "CPU CFS period of the container's limit, in microseconds.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return uint64(max(m.Resources.CPUPeriod, 0)) }},
	{"container_spec_cpu_shares", "CPU shares of the container.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return uint64(max(m.Resources.CPUShares, 0)) }},
	{"container_spec_memory_limit_bytes", "Memory limit of the container.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return uint64(max(m.Resources.MemoryLimitBytes, 0)) }},
	{"container_spec_memory_swap_limit_bytes", "Swap limit of the container: the memory limit, as a Wasm instance has no swap.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return uint64(max(m.Resources.MemoryLimitBytes, 0)) }},
	{"container_start_time_seconds", "When the container started, in Unix seconds.", runtimeapi.MetricType_GAUGE, func(m *metricSource) uint64 { return uint64(max(m.StartedAt.Unix(), 0)) }},
	{"container_threads", "Threads of the container: its instance runs on one.", runtimeapi.MetricType_GAUGE, running},
	{"container_threads_max", "Thread limit of the container: one instance thread.", runtimeapi.MetricType_GAUGE, func(*metricSource) uint64 { return 1 }},
}

func memory(m *metricSource) uint64 { return uint64(m.Stats.MemoryBytes) }

func running(m *metricSource) uint64 {
	if m.State == sandbox.ContainerRunning {
		return 1
	}
	return 0
}

func oomCount(m *metricSource) uint64 {
	if m.Reason == sandbox.ReasonOOMKilled {
		return 1
	}
	return 0
}

// ListMetricDescriptors describes the metrics of ListPodSandboxMetrics.
func (s *Server) ListMetricDescriptors(ctx context.Context, req *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	resp := &runtimeapi.ListMetricDescriptorsResponse{}
	for _, m := range containerMetrics {
		resp.Descriptors = append(resp.Descriptors, &runtimeapi.MetricDescriptor{Name: m.name, Help: m.help, LabelKeys: metricLabels})
	}
	return resp, nil
}

// ListPodSandboxMetrics reports the described metrics of every container.
func (s *Server) ListPodSandboxMetrics(ctx context.Context, req *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	resp := &runtimeapi.ListPodSandboxMetricsResponse{}
	bySandbox := s.detailsBySandbox()
	for _, sb := range s.sandboxes.Sandboxes() {
		pm := &runtimeapi.PodSandboxMetrics{PodSandboxId: sb.ID}
		for _, cs := range bySandbox[sb.ID] {
			src := &metricSource{ContainerWithStats: cs}
			unix.Statfs(cs.Stats.RootDir, &src.fs)
			labels := []string{cs.Config.GetMetadata().GetName(), cs.ID, cs.ImageName, cs.Config.GetMetadata().GetName(),
				sb.Config.GetMetadata().GetNamespace(), sb.Config.GetMetadata().GetName()}
			ts := cs.Stats.Timestamp.UnixNano()
			cm := &runtimeapi.ContainerMetrics{ContainerId: cs.ID}
			for _, m := range containerMetrics {
				cm.Metrics = append(cm.Metrics, &runtimeapi.Metric{
					Name: m.name, Timestamp: ts, MetricType: m.kind, LabelValues: labels,
					Value: &runtimeapi.UInt64Value{Value: m.value(src)},
				})
			}
			pm.ContainerMetrics = append(pm.ContainerMetrics, cm)
		}
		resp.PodMetrics = append(resp.PodMetrics, pm)
	}
	return resp, nil
}

// detailsBySandbox measures every container once, with its instance's
// finer figures, grouped by sandbox.
func (s *Server) detailsBySandbox() map[string][]sandbox.ContainerWithStats {
	by := map[string][]sandbox.ContainerWithStats{}
	for _, cs := range s.sandboxes.AllContainerDetails(func(*sandbox.Container) bool { return true }) {
		by[cs.SandboxID] = append(by[cs.SandboxID], cs)
	}
	return by
}
