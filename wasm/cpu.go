package wasm

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// threadCPU is the CPU time of thread tid of this process, read from its
// per-thread CPU clock (Linux's MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)).
func threadCPU(tid int) time.Duration {
	clock := int32(^tid<<3) | 6
	var ts unix.Timespec
	if err := unix.ClockGettime(clock, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// threadTimes is the user and system CPU time of thread tid, from
// /proc (in USER_HZ ticks, 100 per second on Linux).
func threadTimes(tid int) (user, system time.Duration) {
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/stat")
	if err != nil {
		return 0, 0
	}
	// The command name (field 2) may hold spaces: fields count from its ")".
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0, 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const tick = 10 * time.Millisecond
	return time.Duration(utime) * tick, time.Duration(stime) * tick
}

// ownThreadTimes is the user and system CPU time of the calling thread:
// one system call, where threadTimes reads a file.
func ownThreadTimes() (user, system time.Duration) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// CFSStats is a CPU cap's accounting, from cpu.stat.
type CFSStats struct {
	Periods, ThrottledPeriods uint64
	ThrottledTime             time.Duration
}

// stat reads the CFS accounting of an instance's cgroup; zero without one.
func (c *cpuController) stat(id string) CFSStats {
	var st CFSStats
	if c == nil || id == "" || !c.isCapped(id) {
		return st
	}
	b, err := os.ReadFile(filepath.Join(c.root, id, "cpu.stat"))
	if err != nil {
		return st
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, " ")
		n, _ := strconv.ParseUint(v, 10, 64)
		switch k {
		case "nr_periods":
			st.Periods = n
		case "nr_throttled":
			st.ThrottledPeriods = n
		case "throttled_time":
			st.ThrottledTime = time.Duration(n)
		}
	}
	return st
}

// cpuController caps instance threads with the cgroup v1 cpu controller:
// each capped instance's thread goes into <root>/<instance id> with CFS
// quota and period set. The instance runs on one locked thread, so that
// cgroup holds exactly it. A nil controller caps nothing and says why.
//
// A thread created by a capped thread starts in its cgroup: wasmtime's WASI
// runs a tokio runtime whose worker and blocking-pool threads are spawned
// on first use by whichever instance thread needs them, and serve every
// instance after. Such strays are moved back to the daemon's cgroup when
// the cap is set, every sweep interval while caps exist, and at release.
type cpuController struct {
	// parent is the daemon's own cgroup, where released threads return;
	// root holds one cgroup per capped instance.
	parent, root string

	mu      sync.Mutex
	capped  map[string]int // instance ID -> its thread
	sweeper bool
}

const strayThreadSweep = 500 * time.Millisecond

// errNoCPUController explains why CPU quotas cannot be enforced here.
var errNoCPUController = errors.New("no writable cgroup v1 cpu controller: CPU quotas are not enforced")

// newCPUController finds the cgroup v1 cpu hierarchy and makes dir in it.
func newCPUController(dir string) (*cpuController, error) {
	mount, err := cpuMount()
	if err != nil {
		return nil, err
	}
	// Our own cgroup in that hierarchy: children must nest under it.
	self, err := selfCgroup("cpu")
	if err != nil {
		return nil, err
	}
	parent := filepath.Join(mount, self)
	root := filepath.Join(parent, dir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("%w (%v)", errNoCPUController, err)
	}
	return &cpuController{parent: parent, root: root, capped: map[string]int{}}, nil
}

func cpuMount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// ... mountpoint ... - cgroup cgroup rw,cpu
		fields := strings.Fields(s.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 >= len(fields) || fields[sep+1] != "cgroup" {
			continue
		}
		for _, opt := range strings.Split(fields[sep+3], ",") {
			if opt == "cpu" {
				return fields[4], nil
			}
		}
	}
	return "", errNoCPUController
}

func selfCgroup(controller string) (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == controller {
				return parts[2], nil
			}
		}
	}
	return "/", nil
}

// apply puts thread tid under the limits' CPU cap, or lifts the cap.
func (c *cpuController) apply(id string, tid int, l Limits) error {
	if l.CPUQuota <= 0 {
		if c != nil {
			c.release(id, tid)
		}
		return nil
	}
	if c == nil {
		return errNoCPUController
	}
	if id == "" || strings.ContainsAny(id, "/.") {
		return fmt.Errorf("instance ID %q cannot name a cgroup", id)
	}
	dir := filepath.Join(c.root, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// Recorded as soon as it exists, so that release removes it even if
	// a write below fails.
	c.mu.Lock()
	c.capped[id] = tid
	if !c.sweeper {
		c.sweeper = true
		go c.sweepWhileCapped()
	}
	c.mu.Unlock()
	period := l.CPUPeriod
	if period <= 0 {
		period = 100000
	}
	// The period first: the kernel checks quota against it.
	for _, w := range []struct {
		file  string
		value int64
	}{{"cpu.cfs_period_us", period}, {"cpu.cfs_quota_us", l.CPUQuota}, {"tasks", int64(tid)}} {
		if err := os.WriteFile(filepath.Join(dir, w.file), []byte(strconv.FormatInt(w.value, 10)), 0o644); err != nil {
			return fmt.Errorf("cgroup %s: %w", w.file, err)
		}
	}
	c.evictStrays(id, tid)
	return nil
}

// evictStrays moves every thread but owner out of the instance's cgroup.
func (c *cpuController) evictStrays(id string, owner int) {
	b, err := os.ReadFile(filepath.Join(c.root, id, "tasks"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if tid, err := strconv.Atoi(f); err == nil && tid != owner {
			os.WriteFile(filepath.Join(c.parent, "tasks"), []byte(f), 0o644)
		}
	}
}

func (c *cpuController) sweepWhileCapped() {
	for {
		time.Sleep(strayThreadSweep)
		c.mu.Lock()
		if len(c.capped) == 0 {
			c.sweeper = false
			c.mu.Unlock()
			return
		}
		capped := make(map[string]int, len(c.capped))
		for id, tid := range c.capped {
			capped[id] = tid
		}
		c.mu.Unlock()
		for id, tid := range capped {
			c.evictStrays(id, tid)
		}
	}
}

// isCapped says whether instance id has a cgroup of its own.
func (c *cpuController) isCapped(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.capped[id]
	return ok
}

// release moves the thread back to the daemon's cgroup and removes the
// instance's cgroup.
func (c *cpuController) release(id string, tid int) {
	if c == nil {
		return
	}
	c.mu.Lock()
	_, had := c.capped[id]
	delete(c.capped, id)
	c.mu.Unlock()
	if !had {
		// Only apply makes an instance's cgroup, and records it.
		return
	}
	dir := filepath.Join(c.root, id)
	c.evictStrays(id, -1)
	if err := os.Remove(dir); err != nil {
		// A thread being created by the instance at this moment: it is
		// evicted by the next release or left for the daemon's restart.
		time.AfterFunc(time.Second, func() { c.evictStrays(id, -1); os.Remove(dir) })
	}
}
