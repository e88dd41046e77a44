package wasm

import (
	"sync/atomic"
	"time"
)

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
	defer i.mu.Unlock()
	switch {
	case i.cpuFinal || i.tid == 0:
		u.CPU = i.final.CPU
	default:
		u.CPU = i.asleep.cpu(i.tid)
	}
	return u
}

// sleepClock spares Usage the clock_gettime of an instance asleep in
// poll_oneoff, as most of a node's idle pods are: its thread uses no CPU
// until it wakes. Two equal readings in one sleep show the thread has
// blocked (marking the sleep comes a few instructions before), and that
// reading holds until the instance wakes.
type sleepClock struct {
	// sleeps is odd while the instance sleeps; each sleep and each wake
	// moves it on.
	sleeps atomic.Uint64
	// at is the sleep of the last reading, read; held says a second one
	// found the same. All three under Instance.mu.
	at   uint64
	read time.Duration
	held bool
}

func (c *sleepClock) begin() { c.sleeps.Add(1) }
func (c *sleepClock) end()   { c.sleeps.Add(1) }

// cpu is thread tid's CPU time; the instance's mu is held.
func (c *sleepClock) cpu(tid int) time.Duration {
	n := c.sleeps.Load()
	if n%2 == 1 && c.at == n && c.held {
		return c.read
	}
	d := threadCPU(tid)
	if n%2 == 1 {
		c.held = c.at == n && c.read == d
		c.at, c.read = n, d
	}
	return d
}
