package wasm

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// memFigures are the process's memory figures from /proc/self/smaps_rollup,
// in bytes. RSS counts a page once for every mapping of it: a file mapped
// n times in the daemon is n times in its RSS. PSS counts each page once,
// shared out between the processes (and mappings) that map it.
type memFigures struct{ rss, pss, pssAnon, pssFile int64 }

func readRollup(t testing.TB) memFigures {
	t.Helper()
	f, err := os.Open("/proc/self/smaps_rollup")
	if err != nil {
		t.Skipf("no smaps_rollup: %v", err)
	}
	defer f.Close()
	var m memFigures
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 2 {
			continue
		}
		n, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "Rss:":
			m.rss = n << 10
		case "Pss:":
			m.pss = n << 10
		case "Pss_Anon:":
			m.pssAnon = n << 10
		case "Pss_File:":
			m.pssFile = n << 10
		}
	}
	return m
}

// mapped is what /proc/self/smaps says of some mappings: how many areas,
// and the RSS and PSS they add up to.
type mapped struct {
	areas    int
	rss, pss int64
}

// moduleMappings sorts the mappings of the compiled module at path: its
// code and read-only data, mapped by loading it (a few areas for one
// load), and the copy-on-write images of its data that wasmtime maps
// into each instance's linear memory (one writable area an instance;
// their pages are the file's until the instance writes them).
func moduleMappings(t testing.TB, path string) (code, images mapped) {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	var in *mapped
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && len(fields) >= 5 {
			// An area's header: address perms offset dev inode [path].
			in = nil
			if len(fields) >= 6 && fields[5] == path {
				in = &code
				if strings.Contains(fields[1], "w") {
					in = &images
				}
				in.areas++
			}
			continue
		}
		if in == nil || len(fields) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "Rss:":
			in.rss += n << 10
		case "Pss:":
			in.pss += n << 10
		}
	}
	return code, images
}

// idleInstances is how many idle instances TestMemoryPerInstance adds;
// WASMCRI_MEMORY_INSTANCES changes it.
func idleInstances() int {
	if n, err := strconv.Atoi(os.Getenv("WASMCRI_MEMORY_INSTANCES")); err == nil && n > 0 {
		return n
	}
	return 50
}

// TestMemoryPerInstance logs what an idle instance of the Go test module
// costs the daemon in RSS and PSS, and how much of it is the compiled
// module's mappings: the figures an operator compares with a pod count.
// One instance runs first, so that one-time costs (loading the module,
// WASI's threads) are not counted per instance. The module's code is
// mapped once whatever the number of instances: its areas and their RSS
// do not grow with them.
//
// PSS is the figure to trust: the daemon's RSS also counts, once per
// instance, the pages of the module's data image each linear memory maps
// copy-on-write from the compiled file, which all instances share until
// they write them.
func TestMemoryPerInstance(t *testing.T) {
	r := newRuntime(t)
	c := prepare(t, r, testmodule.Hello(t))
	st, err := os.Stat(c.Path)
	if err != nil {
		t.Fatal(err)
	}
	n := idleInstances()
	// startIdle starts k instances, then waits for each to have slept
	// and ticked twice: idle from then on, between 100ms sleeps.
	startIdle := func(k int) {
		t.Helper()
		var outs []*output
		var insts []*Instance
		for range k {
			inst, out := run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello", "sleep-forever"}})
			insts, outs = append(insts, inst), append(outs, out)
		}
		for j, out := range outs {
			waitOutput(t, &out.stdout, "tick 1")
			running(t, insts[j], "an idle instance")
		}
		runtime.GC()
		time.Sleep(200 * time.Millisecond)
	}
	startIdle(1)
	before := readRollup(t)
	code1, images1 := moduleMappings(t, c.Path)
	startIdle(n)
	after := readRollup(t)
	codeN, imagesN := moduleMappings(t, c.Path)

	per := func(a, b int64) int64 { return (b - a) / int64(n) }
	t.Logf("compiled module %d KiB; %d idle instances added to 1", st.Size()>>10, n)
	t.Logf("process with 1 instance: RSS %d KiB, PSS %d KiB (anon %d, file %d); with %d: RSS %d KiB, PSS %d KiB (anon %d, file %d)",
		before.rss>>10, before.pss>>10, before.pssAnon>>10, before.pssFile>>10,
		n+1, after.rss>>10, after.pss>>10, after.pssAnon>>10, after.pssFile>>10)
	t.Logf("per added instance: RSS +%d KiB, PSS +%d KiB (anon +%d, file +%d)",
		per(before.rss, after.rss)>>10, per(before.pss, after.pss)>>10,
		per(before.pssAnon, after.pssAnon)>>10, per(before.pssFile, after.pssFile)>>10)
	t.Logf("the module's code: %d areas, RSS %d KiB, PSS %d KiB with 1 instance; %d areas, RSS %d KiB, PSS %d KiB with %d",
		code1.areas, code1.rss>>10, code1.pss>>10, codeN.areas, codeN.rss>>10, codeN.pss>>10, n+1)
	t.Logf("its data images in linear memories: %d areas, RSS %d KiB, PSS %d KiB with 1 instance; %d areas, RSS %d KiB, PSS %d KiB with %d",
		images1.areas, images1.rss>>10, images1.pss>>10, imagesN.areas, imagesN.rss>>10, imagesN.pss>>10, n+1)
	if codeN.areas != code1.areas || codeN.rss > code1.rss+code1.rss/4 {
		t.Errorf("the module's code is mapped again for more instances: %d areas, RSS %d KiB with 1 instance; %d areas, RSS %d KiB with %d",
			code1.areas, code1.rss>>10, codeN.areas, codeN.rss>>10, n+1)
	}
}
