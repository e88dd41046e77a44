package wasm

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// An instance's memory limit L bounds the sum of everything its store can
// grow: linear memories and tables. wasmtime's store limiter has no total,
// only a size per memory, a size per table and counts of instances,
// memories and tables, and no way to tell the host when it refuses a
// growth. Since core wasm cannot create memories or tables, the module's
// own declarations (made visible by exportMemoriesAndTables) fix their
// numbers M and T, and L is split between them:
//
//   - tables get L/16 when the module has any, spread evenly over its T
//     tables at tableElementBytes per element. Tables hold references to
//     functions: compilers size them for the functions called indirectly
//     and rarely grow them (the Go test module's one table has 5999
//     elements, 47 KiB), while memory is what programs grow; 1/16 leaves
//     memory most of the limit and still lets a table grow to L/128
//     elements;
//   - memories get the rest, spread evenly over the M memories.
//
// So no combination of growths takes the store past L. The store also
// admits one instance (a WASI command needs only its own: WASI is host
// functions, not an instance) and exactly M memories and T tables.
//
// wasmtime keeps a growable table in a Rust Vec, whose capacity may run
// ahead of its length (amortized doubling), so the heap a table holds can
// transiently reach a few times its size * 8 bytes; the accounting here
// counts size * 8, what the table holds.

// tableElementBytes is what one table element costs the daemon's heap: a
// (tagged) function pointer in wasmtime.
const tableElementBytes = 8

// storeLimits are the knobs of wasmtime's store limiter; -1 keeps
// wasmtime's default (no limit for sizes).
type storeLimits struct {
	memoryBytes, tableElements, instances, tables, memories int64
}

// tableShare is the part of total that the tables of a module with tables
// may use.
func tableShare(total int64, tables int) int64 {
	if tables == 0 {
		return 0
	}
	return total / 16
}

// limitsFor splits total (0: none) over the memories and tables of shape.
func limitsFor(total int64, shape moduleShape) storeLimits {
	l := storeLimits{memoryBytes: -1, tableElements: -1, instances: 1, tables: int64(shape.tables), memories: int64(shape.memories)}
	if total <= 0 {
		return l
	}
	share := tableShare(total, shape.tables)
	if shape.tables > 0 {
		l.tableElements = share / int64(shape.tables) / tableElementBytes
	}
	if shape.memories > 0 {
		l.memoryBytes = (total - share) / int64(shape.memories)
	}
	return l
}

func (l storeLimits) apply(store *wasmtime.Store) {
	store.Limiter(l.memoryBytes, l.tableElements, l.instances, l.tables, l.memories)
}

// shapeOf counts the reserved exports of a module compiled from
// exportMemoriesAndTables' output.
func shapeOf(mod *wasmtime.Module) (moduleShape, error) {
	memories, tables := map[int]bool{}, map[int]bool{}
	for _, e := range mod.Exports() {
		name := e.Name()
		var set map[int]bool
		var index string
		switch {
		case strings.HasPrefix(name, reservedMemoryPrefix) && e.Type().MemoryType() != nil:
			set, index = memories, strings.TrimPrefix(name, reservedMemoryPrefix)
		case strings.HasPrefix(name, reservedTablePrefix) && e.Type().TableType() != nil:
			set, index = tables, strings.TrimPrefix(name, reservedTablePrefix)
		default:
			continue
		}
		n, err := strconv.Atoi(index)
		if err != nil || n < 0 || n >= maxMemoriesOrTables {
			return moduleShape{}, fmt.Errorf("reserved export %q", name)
		}
		set[n] = true
	}
	for _, set := range []map[int]bool{memories, tables} {
		for i := range len(set) {
			if !set[i] {
				return moduleShape{}, fmt.Errorf("reserved exports are not numbered 0 to %d", len(set)-1)
			}
		}
	}
	return moduleShape{memories: len(memories), tables: len(tables)}, nil
}

// footprint is what an instance's memories and tables measured last.
type footprint struct {
	memories []int64 // bytes
	tables   []int64 // elements
}

func (f footprint) total() int64 {
	var n int64
	for _, m := range f.memories {
		n += m
	}
	for _, t := range f.tables {
		n += t * tableElementBytes
	}
	return n
}

// atLimit says whether f is where a store under total fails to grow: its
// sum near total, or one memory or table near its own share.
func (f footprint) atLimit(total int64, shape moduleShape) bool {
	if total <= 0 {
		return false
	}
	if f.total()+oomMargin(total) >= total {
		return true
	}
	l := limitsFor(total, shape)
	for _, m := range f.memories {
		if l.memoryBytes > 0 && m+oomMargin(l.memoryBytes) >= l.memoryBytes {
			return true
		}
	}
	for _, t := range f.tables {
		if share := l.tableElements * tableElementBytes; share > 0 && t*tableElementBytes+oomMargin(share) >= share {
			return true
		}
	}
	return false
}
