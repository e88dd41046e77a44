package sandbox

import (
	"fmt"

	"github.com/wasmcri/wasmcri/internal/inroot"
	"github.com/wasmcri/wasmcri/wasm"
)

// watch records how the instance ended. Exec instances end with it, as
// the processes of a container end with its init; its preopened
// directories are released once nothing uses them.
func (m *Manager) watch(c *containerEntry, r *run) {
	l := r.live
	res := l.instance.Result()
	cpu := l.instance.Stats().CPU
	l.stdin.close()
	c.mu.Lock()
	r.ending = true
	execs := make([]*wasm.Instance, 0, len(r.execs))
	for e := range r.execs {
		execs = append(execs, e)
	}
	c.mu.Unlock()
	for _, e := range execs {
		e.Stop()
	}
	r.execing.Wait()
	var copyErr error
	if len(l.files) > 0 {
		if root, err := inroot.Open(m.rootfs(c.ID)); err != nil {
			copyErr = err
		} else {
			copyErr = copyBack(root, l.files)
			root.Close()
		}
	}
	l.pre.close()

	c.mu.Lock()
	defer c.mu.Unlock()
	defer close(r.recorded)
	c.run = nil
	m.updateContainerLocked(c, fact, ContainerStoppedEvent, func(s *ContainerStatus) error {
		s.State = ContainerExited
		s.FinishedAt = res.FinishedAt
		s.ExitCode = res.ExitCode
		s.CPU = cpu
		s.Reason, s.Message = m.exitReason(s.Resources, res)
		return nil
	})
	if copyErr != nil {
		m.log.Warn("file mounts not copied back", "container", c.ID, "error", copyErr)
	}
	m.log.Info("container exited", "container", c.ID, "exit_code", c.ExitCode, "reason", c.Reason, "message", c.Message)
}

// exitReason is how a container's instance ended, as CRI reasons go.
func (m *Manager) exitReason(limits Resources, res wasm.Result) (reason, message string) {
	switch {
	case res.OOM && limits.MemoryLimitBytes > 0:
		return ReasonOOMKilled, fmt.Sprintf("memory limit of %d bytes reached: %s", limits.MemoryLimitBytes, res.Trap)
	case res.OOM:
		return ReasonOOMKilled, "the node's default memory limit (runtime.default_memory_limit) reached: " + res.Trap
	case res.StartError != "":
		// The module's instantiation failed after Start had returned.
		return ReasonStartError, res.StartError
	case res.Stopped && m.shuttingDown.Load():
		return ReasonDaemonRestarted, "wasmcri was shut down while the container was running"
	case res.Stopped:
		return ReasonError, "stopped by the runtime"
	case res.Trap != "":
		return ReasonError, "wasm trap: " + res.Trap
	case res.ExitCode == 0:
		return ReasonCompleted, ""
	default:
		return ReasonError, ""
	}
}
