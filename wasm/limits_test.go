package wasm

import (
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// newRuntimeWith is a runtime with opts and a compile cache of its own.
func newRuntimeWith(t *testing.T, opts Options) *Runtime {
	t.Helper()
	r, err := NewRuntime(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func TestTableBombStopsAtItsShare(t *testing.T) {
	const limit = 64 << 20
	const share = limit / 16 // the tables' share, one table
	for _, tc := range []struct {
		name   string
		opts   Options
		limits Limits
	}{
		{"container limit", Options{}, Limits{MemoryBytes: limit}},
		{"default limit", Options{DefaultMemoryLimit: limit}, Limits{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRuntimeWith(t, tc.opts)
			inst := startWithin(t, r, prepare(t, r, testmodule.Wat(t, testmodule.TableBomb)), Spec{Limits: tc.limits}, 10*time.Second)
			res := wait(t, inst, 20*time.Second)
			if !res.OOM || res.ExitCode != 137 {
				t.Fatalf("result = %+v", res)
			}
			// The memory's one page, and a table within one growth step of
			// its share but never over it.
			got := inst.Stats().MaxMemoryBytes - 65536
			if got > share || got <= share-65536*tableElementBytes {
				t.Fatalf("table reached %d bytes; its share of %d is %d", got, limit, share)
			}
		})
	}
}

// Stats count every memory and table, exported or not, at instantiation.
func TestStatsCountHiddenMemoriesAndTables(t *testing.T) {
	r := newRuntime(t)
	module := testmodule.Wat(t, `(module
  (memory (export "memory") 1)
  (memory 32)
  (table 100000 funcref)
  (table 10 externref)
  (func (export "_start") (loop (br 0))))`)
	inst := startWithin(t, r, prepare(t, r, module), Spec{}, 10*time.Second)
	want := int64(65536 + 32*65536 + (100000+10)*tableElementBytes)
	pollUntil(t, 10*time.Second, "memory measured", func() bool { return inst.Stats().MemoryBytes != 0 })
	if st := inst.Stats(); st.MemoryBytes != want || st.MaxMemoryBytes != want {
		t.Fatalf("memory %d, max %d; want %d", st.MemoryBytes, st.MaxMemoryBytes, want)
	}
	inst.Stop()
	wait(t, inst, 5*time.Second)
}

func TestManyMemoriesShareTheLimit(t *testing.T) {
	const limit = 64 << 20
	r := newRuntime(t)

	inst := startWithin(t, r, prepare(t, r, testmodule.Wat(t, testmodule.ManyMemories(50, 1))), Spec{Limits: Limits{MemoryBytes: limit}}, 10*time.Second)
	res := wait(t, inst, 20*time.Second)
	if !res.OOM || res.ExitCode != 137 {
		t.Fatalf("growing 50 memories: result = %+v", res)
	}
	// Each memory stops at the last whole page under its share.
	if got := inst.Stats().MaxMemoryBytes; got > limit || got < limit-50*65536 {
		t.Fatalf("50 memories reached %d bytes under a limit of %d", got, limit)
	}

	// Initial sizes that only fit under 50 times the limit do not
	// instantiate.
	inst = startWithin(t, r, prepare(t, r, testmodule.Wat(t, testmodule.ManyMemories(50, 32))), Spec{Limits: Limits{MemoryBytes: limit}}, 10*time.Second)
	res = wait(t, inst, 20*time.Second)
	if !res.OOM || res.ExitCode != 137 || !strings.Contains(res.Trap, "memory") {
		t.Fatalf("50 memories of 2 MiB under 64 MiB: result = %+v", res)
	}
	if got := inst.Stats().MaxMemoryBytes; got != 0 {
		t.Fatalf("a module that did not instantiate used %d bytes", got)
	}
}

func TestMemory64IsBounded(t *testing.T) {
	const limit = 16 << 20
	module := testmodule.Wat(t, `(module
  (memory i64 1)
  (func (export "_start")
    (loop $g (br_if $g (i64.ne (memory.grow (i64.const 1)) (i64.const -1))))
    unreachable))`)
	for _, tc := range []struct {
		name   string
		opts   Options
		limits Limits
	}{
		{"container limit", Options{}, Limits{MemoryBytes: limit}},
		{"default limit", Options{DefaultMemoryLimit: limit}, Limits{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRuntimeWith(t, tc.opts)
			inst := startWithin(t, r, prepare(t, r, module), Spec{Limits: tc.limits}, 10*time.Second)
			if res := wait(t, inst, 20*time.Second); !res.OOM || res.ExitCode != 137 {
				t.Fatalf("result = %+v", res)
			}
			if got := inst.Stats().MaxMemoryBytes; got != limit {
				t.Fatalf("memory64 reached %d bytes under a limit of %d", got, limit)
			}
		})
	}
}

// A store admits one instance: the one Start makes.
func TestStoreAdmitsOneInstance(t *testing.T) {
	r := newRuntime(t)
	ld, err := r.load(prepare(t, r, testmodule.Wat(t, testmodule.Print)))
	if err != nil {
		t.Fatal(err)
	}
	defer ld.close()
	for _, limit := range []int64{0, 64 << 20} {
		store := wasmtime.NewStoreWithData(r.engine, &Instance{})
		store.SetEpochDeadline(1)
		limitsFor(limit, ld.shape).apply(store)
		store.SetWasi(wasmtime.NewWasiConfig())
		if _, err := r.linker.Instantiate(store, ld.module); err != nil {
			t.Fatalf("limit %d: the first instance: %v", limit, err)
		}
		_, err := r.linker.Instantiate(store, ld.module)
		if err == nil || !isLimitError(err) {
			t.Fatalf("limit %d: a second instance in the store: %v", limit, err)
		}
		store.Close()
	}
}

// sleepingTableGrower grows a table by 8192 elements, then sleeps 1ms in
// poll_oneoff (where a new limit applies), until a growth fails.
const sleepingTableGrower = `(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (table 1 funcref)
  (func (export "_start")
    ;; one clock subscription at 0: tag 0, relative timeout of 1ms
    (i64.store (i32.const 24) (i64.const 1000000))
    (loop $grow
      (if (i32.eq (table.grow (ref.null func) (i32.const 8192)) (i32.const -1)) (then unreachable))
      (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
      (br $grow))))`

// SetLimits applies to tables too: lowering the limit under what a table
// holds stops its growth.
func TestSetLimitsBoundsTables(t *testing.T) {
	r := newRuntime(t)
	inst := startWithin(t, r, prepare(t, r, testmodule.Wat(t, sleepingTableGrower)), Spec{}, 10*time.Second)
	pollUntil(t, 20*time.Second, "table over 2 MiB", func() bool { return inst.Stats().MemoryBytes > 2<<20 })
	at := inst.Stats().MemoryBytes
	// A table share of 1 MiB.
	if err := inst.SetLimits(Limits{MemoryBytes: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	res := wait(t, inst, 20*time.Second)
	if !res.OOM || res.ExitCode != 137 {
		t.Fatalf("result = %+v", res)
	}
	// It went on for at most the few steps before its next host call.
	if got := inst.Stats().MaxMemoryBytes; got > at+4*8192*tableElementBytes {
		t.Fatalf("the table grew from %d to %d bytes after the limit was lowered", at, got)
	}
}

func TestLimitsSplit(t *testing.T) {
	for _, tc := range []struct {
		total int64
		shape moduleShape
		want  storeLimits
	}{
		{0, moduleShape{1, 1}, storeLimits{-1, -1, 1, 1, 1}},
		{0, moduleShape{}, storeLimits{-1, -1, 1, 0, 0}},
		{64 << 20, moduleShape{1, 1}, storeLimits{60 << 20, 4 << 20 / 8, 1, 1, 1}},
		{64 << 20, moduleShape{1, 0}, storeLimits{64 << 20, -1, 1, 0, 1}},
		{64 << 20, moduleShape{0, 2}, storeLimits{-1, 2 << 20 / 8, 1, 2, 0}},
		{64 << 20, moduleShape{4, 2}, storeLimits{15 << 20, 2 << 20 / 8, 1, 2, 4}},
	} {
		got := limitsFor(tc.total, tc.shape)
		if got != tc.want {
			t.Errorf("limitsFor(%d, %+v) = %+v, want %+v", tc.total, tc.shape, got, tc.want)
		}
		// Whatever the sizes, the sum stays under the total.
		if tc.total > 0 {
			sum := max(got.memoryBytes, 0)*int64(tc.shape.memories) + max(got.tableElements, 0)*tableElementBytes*int64(tc.shape.tables)
			if sum > tc.total {
				t.Errorf("limitsFor(%d, %+v) admits %d bytes", tc.total, tc.shape, sum)
			}
		}
	}
}
