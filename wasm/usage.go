package wasm

import "time"

// Usage is the part of an instance's Stats that costs no file reads: its
// thread's CPU clock (one clock_gettime) and the memory size noted at its
// last host call. Kubelet's stats calls ask for every container each
// time, where Stats's /proc and cgroupfs reads cost tens of µs apiece.
type Usage struct {
	CPU         time.Duration
	MemoryBytes int64
}

// Usage reports the instance's CPU time and memory, as Stats does.
func (i *Instance) Usage() Usage {
	u := Usage{MemoryBytes: i.memory.Load()}
	i.mu.Lock()
	if i.cpuFinal || i.tid == 0 {
		u.CPU = i.final.CPU
	} else {
		u.CPU = threadCPU(i.tid)
	}
	i.mu.Unlock()
	return u
}
