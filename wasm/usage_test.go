package wasm

import (
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// Usage is Stats without the file reads: for a spinning instance its CPU
// time grows, and it agrees with Stats's CPU (the same clock) and with the
// user and system times /proc reports; after the end, it is the final
// figure.
func TestUsageAgreesWithStats(t *testing.T) {
	r := newRuntime(t)
	inst, _ := run(t, r, testmodule.Wat(t, testmodule.Spin), Spec{Args: []string{"spin"}})
	pollUntil(t, 10*time.Second, "spinning for 100ms of CPU", func() bool { return inst.Usage().CPU > 100*time.Millisecond })

	before := inst.Usage()
	st := inst.Stats()
	after := inst.Usage()
	if !(before.CPU <= st.CPU && st.CPU <= after.CPU) {
		t.Errorf("CPU out of order: Usage %v, then Stats %v, then Usage %v", before.CPU, st.CPU, after.CPU)
	}
	if before.MemoryBytes != st.MemoryBytes || st.MemoryBytes == 0 {
		t.Errorf("memory: Usage %d, Stats %d", before.MemoryBytes, st.MemoryBytes)
	}
	// /proc counts in 10ms ticks, scaled to the same runtime: a few ticks
	// and a tenth apart at most.
	if ticks, diff := st.User+st.System, st.CPU-(st.User+st.System); diff < -(30*time.Millisecond+st.CPU/10) || diff > 30*time.Millisecond+st.CPU/10 {
		t.Errorf("user+system %v against the CPU clock's %v", ticks, st.CPU)
	}
	pollUntil(t, 10*time.Second, "the CPU time growing", func() bool { return inst.Usage().CPU > after.CPU })

	inst.Stop()
	wait(t, inst, 5*time.Second)
	end, final := inst.Usage(), inst.Stats()
	if end.CPU != final.CPU || end.CPU < after.CPU {
		t.Errorf("after the end: Usage %v, Stats %v, last live reading %v", end.CPU, final.CPU, after.CPU)
	}
	// The final user and system times come from the thread itself
	// (getrusage, in µs): they add up to its CPU clock.
	if diff := final.CPU - (final.User + final.System); final.User == 0 || diff < -(5*time.Millisecond+final.CPU/20) || diff > 5*time.Millisecond+final.CPU/20 {
		t.Errorf("final user %v + system %v against the CPU clock's %v", final.User, final.System, final.CPU)
	}
}

// An instance asleep in poll_oneoff keeps its CPU time, which Usage then
// holds without reading the clock: it agrees with the clock (Stats). One
// that wakes and sleeps again is read again.
func TestUsageOfSleepingInstances(t *testing.T) {
	r := newRuntime(t)
	sleeper, _ := run(t, r, testmodule.Wat(t, testmodule.SleepHour), Spec{Args: []string{"sleep"}})
	pollUntil(t, 10*time.Second, "the sleeper's reading held", func() bool {
		sleeper.Usage()
		sleeper.mu.Lock()
		defer sleeper.mu.Unlock()
		return sleeper.asleep.held
	})
	if u, st := sleeper.Usage(), sleeper.Stats(); u.CPU != st.CPU || u.CPU == 0 {
		t.Errorf("asleep: Usage %v, Stats %v", u.CPU, st.CPU)
	}

	ticker, out := run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello", "sleep-forever"}})
	waitOutput(t, &out.stdout, "tick 1")
	first := ticker.Usage().CPU
	waitOutput(t, &out.stdout, "tick 4")
	if later := ticker.Usage().CPU; later <= first {
		t.Errorf("a ticking instance's CPU time stayed at %v over three wakes (now %v)", first, later)
	}
	if u, st := ticker.Usage(), ticker.Stats(); u.CPU > st.CPU {
		t.Errorf("ticking: Usage %v ahead of Stats %v", u.CPU, st.CPU)
	}
}
