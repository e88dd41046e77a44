package wasm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The runtime reads a little of the WebAssembly binary format itself: the
// host can only see a module's memories and tables through its exports,
// and modules need not export them. Before compiling, exportMemoriesAndTables
// adds an export under a reserved name for every memory and every table,
// so the instance's own thread can measure all of them and the store's
// limits can be set from their exact number (core wasm has no instruction
// that creates a memory or a table: the module's declarations are all
// there will ever be).

// reservedExportPrefix starts the names of the exports the runtime adds.
// A module that exports a name starting with it is refused.
const reservedExportPrefix = "wasmcri.internal/"

const (
	reservedMemoryPrefix = reservedExportPrefix + "memory/"
	reservedTablePrefix  = reservedExportPrefix + "table/"
)

func reservedMemoryName(i int) string { return reservedMemoryPrefix + strconv.Itoa(i) }
func reservedTableName(i int) string  { return reservedTablePrefix + strconv.Itoa(i) }

// maxMemoriesOrTables is wasmtime's (wasmparser's) limit on the memories,
// and separately the tables, of one module, imported ones included.
const maxMemoriesOrTables = 100

// errReservedExport is a module that uses the runtime's reserved names.
var errReservedExport = errors.New("the module exports a name starting with " + strconv.Quote(reservedExportPrefix) + ", which the runtime reserves")

// moduleShape is how many memories and tables a module has, imported and
// defined (index spaces count imports first).
type moduleShape struct{ memories, tables int }

// export kinds of the binary format.
const (
	externFunc   = 0x00
	externTable  = 0x01
	externMemory = 0x02
	externGlobal = 0x03
	externTag    = 0x04
)

// Section IDs that matter here.
const (
	sectionCustom = 0
	sectionImport = 2
	sectionTable  = 4
	sectionMemory = 5
	sectionExport = 7
)

// sectionRank is the order non-custom sections must appear in (the tag
// section, 13, comes between memory and global; data count, 12, before
// code).
var sectionRank = map[byte]int{1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13}

var wasmHeader = []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}

// exportEntry is one export to add.
type exportEntry struct {
	name  string
	kind  byte
	index uint32
}

// parsedModule is a module split into its sections.
type parsedModule struct {
	sections []section
	shape    moduleShape
	// export is the index in sections of the export section, or -1.
	export int
	// exportCount and exportEntries are that section's entries, raw.
	exportCount   uint32
	exportEntries []byte
}

type section struct {
	id      byte
	payload []byte
}

// exportMemoriesAndTables returns the module with every memory and table
// also exported under a reserved name, and its shape. A module with
// neither comes back unchanged. It refuses what it cannot parse (which
// wasmtime would refuse too) and modules that use the reserved names.
func exportMemoriesAndTables(b []byte) ([]byte, moduleShape, error) {
	m, err := parseModule(b)
	if err != nil {
		return nil, moduleShape{}, err
	}
	if m.shape.memories == 0 && m.shape.tables == 0 {
		return b, m.shape, nil
	}
	entries := make([]exportEntry, 0, m.shape.memories+m.shape.tables)
	for i := 0; i < m.shape.memories; i++ {
		entries = append(entries, exportEntry{reservedMemoryName(i), externMemory, uint32(i)})
	}
	for i := 0; i < m.shape.tables; i++ {
		entries = append(entries, exportEntry{reservedTableName(i), externTable, uint32(i)})
	}
	return m.withExports(entries), m.shape, nil
}

// parseModule reads the section layout, the memory and table counts and
// the export section. It checks only what it reads.
func parseModule(b []byte) (*parsedModule, error) {
	if len(b) < len(wasmHeader) || string(b[:4]) != string(wasmHeader[:4]) {
		return nil, errors.New("not a WebAssembly binary (no \\0asm magic)")
	}
	if string(b[4:8]) != string(wasmHeader[4:8]) {
		return nil, fmt.Errorf("unsupported WebAssembly binary version or layer %x (a component, not a core module?)", b[4:8])
	}
	m := &parsedModule{export: -1}
	r := &wasmReader{b: b, off: len(wasmHeader)}
	seen := map[byte]bool{}
	var importedMemories, importedTables, definedMemories, definedTables uint32
	for r.err == nil && r.off < len(b) {
		id := r.byte()
		size := r.u32()
		payload := r.bytes(int(min(size, 1<<31)))
		if r.err != nil {
			return nil, fmt.Errorf("section %d: %w", id, r.err)
		}
		if id != sectionCustom {
			if _, known := sectionRank[id]; !known {
				return nil, fmt.Errorf("unknown section id %d", id)
			}
			if seen[id] {
				return nil, fmt.Errorf("section %d appears twice", id)
			}
			seen[id] = true
		}
		var err error
		switch id {
		case sectionImport:
			importedTables, importedMemories, err = parseImports(payload)
		case sectionTable:
			definedTables, err = sectionCount(payload)
		case sectionMemory:
			definedMemories, err = sectionCount(payload)
		case sectionExport:
			m.export = len(m.sections)
			m.exportCount, m.exportEntries, err = parseExports(payload)
		}
		if err != nil {
			return nil, fmt.Errorf("section %d: %w", id, err)
		}
		m.sections = append(m.sections, section{id: id, payload: payload})
	}
	memories := uint64(importedMemories) + uint64(definedMemories)
	tables := uint64(importedTables) + uint64(definedTables)
	if memories > maxMemoriesOrTables || tables > maxMemoriesOrTables {
		return nil, fmt.Errorf("%d memories and %d tables: over the limit of %d each", memories, tables, maxMemoriesOrTables)
	}
	m.shape = moduleShape{memories: int(memories), tables: int(tables)}
	return m, nil
}

// withExports re-encodes the module with entries added to its export
// section (made if it has none, in its place in the section order).
func (m *parsedModule) withExports(entries []exportEntry) []byte {
	var payload []byte
	payload = appendU32(payload, m.exportCount+uint32(len(entries)))
	payload = append(payload, m.exportEntries...)
	for _, e := range entries {
		payload = appendU32(payload, uint32(len(e.name)))
		payload = append(payload, e.name...)
		payload = append(payload, e.kind)
		payload = appendU32(payload, e.index)
	}
	exports := section{id: sectionExport, payload: payload}

	sections := make([]section, 0, len(m.sections)+1)
	if m.export >= 0 {
		sections = append(sections, m.sections...)
		sections[m.export] = exports
	} else {
		inserted := false
		for _, s := range m.sections {
			if !inserted && s.id != sectionCustom && sectionRank[s.id] > sectionRank[sectionExport] {
				sections = append(sections, exports)
				inserted = true
			}
			sections = append(sections, s)
		}
		if !inserted {
			sections = append(sections, exports)
		}
	}
	size := len(wasmHeader)
	for _, s := range sections {
		size += 1 + 5 + len(s.payload)
	}
	out := make([]byte, 0, size)
	out = append(out, wasmHeader...)
	for _, s := range sections {
		out = append(out, s.id)
		out = appendU32(out, uint32(len(s.payload)))
		out = append(out, s.payload...)
	}
	return out
}

// sectionCount reads the entry count that starts a vector section.
func sectionCount(payload []byte) (uint32, error) {
	r := &wasmReader{b: payload}
	n := r.u32()
	return n, r.err
}

// parseImports counts the imported tables and memories.
func parseImports(payload []byte) (tables, memories uint32, err error) {
	r := &wasmReader{b: payload}
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		r.name()
		r.name()
		switch kind := r.byte(); kind {
		case externFunc:
			r.u32()
		case externTable:
			r.valType()
			r.limits()
			tables++
		case externMemory:
			r.limits()
			memories++
		case externGlobal:
			r.valType()
			r.byte()
		case externTag:
			r.byte()
			r.u32()
		default:
			if r.err == nil {
				r.err = fmt.Errorf("import of unknown kind 0x%02x", kind)
			}
		}
		if tables > maxMemoriesOrTables || memories > maxMemoriesOrTables {
			return 0, 0, fmt.Errorf("over %d imported tables or memories", maxMemoriesOrTables)
		}
	}
	if r.err == nil && r.off != len(payload) {
		r.err = errors.New("trailing bytes after the imports")
	}
	return tables, memories, r.err
}

// parseExports returns the export count and the raw entries, refusing the
// reserved names.
func parseExports(payload []byte) (uint32, []byte, error) {
	r := &wasmReader{b: payload}
	n := r.u32()
	start := r.off
	for i := uint32(0); i < n && r.err == nil; i++ {
		name := r.name()
		r.byte()
		r.u32()
		if r.err == nil && strings.HasPrefix(string(name), reservedExportPrefix) {
			return 0, nil, errReservedExport
		}
	}
	if r.err == nil && r.off != len(payload) {
		r.err = errors.New("trailing bytes after the exports")
	}
	if r.err != nil {
		return 0, nil, r.err
	}
	return n, payload[start:], nil
}

// wasmReader decodes the binary format; the first error sticks and every
// later read returns zero.
type wasmReader struct {
	b   []byte
	off int
	err error
}

var errTruncated = errors.New("unexpected end")

func (r *wasmReader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.b) {
		r.err = errTruncated
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

func (r *wasmReader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = errTruncated
		return nil
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p
}

// uleb reads an unsigned LEB128 of at most bits bits, refusing the
// encodings wasm does: more bytes than needed for bits, or set bits beyond
// them in the last byte.
func (r *wasmReader) uleb(bits uint) uint64 {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		if shift+7 >= bits && (c&0x80 != 0 || uint64(c&0x7f)>>(bits-shift) != 0) {
			r.err = fmt.Errorf("integer representation too long or too large for %d bits", bits)
			return 0
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v
		}
	}
}

func (r *wasmReader) u32() uint32 { return uint32(r.uleb(32)) }

// s33 skips a signed 33-bit LEB128 (a heap type), at most 5 bytes.
func (r *wasmReader) s33() {
	for i := 0; i < 5; i++ {
		if r.byte()&0x80 == 0 {
			return
		}
	}
	if r.err == nil {
		r.err = errors.New("s33 representation too long")
	}
}

// name skips a name (a vector of bytes) and returns it.
func (r *wasmReader) name() []byte {
	n := r.u32()
	return r.bytes(int(min(n, 1<<31)))
}

// valType skips a value or reference type: one byte, or a (ref null? ht)
// prefix followed by a heap type.
func (r *wasmReader) valType() {
	switch r.byte() {
	case 0x63, 0x64:
		r.s33()
	}
}

// limits skips table or memory limits: flags, minimum, maximum if
// flagged, page size exponent if flagged; 64-bit bounds if flagged.
func (r *wasmReader) limits() {
	flags := r.byte()
	if flags > 0x0f {
		if r.err == nil {
			r.err = fmt.Errorf("invalid limits flags 0x%02x", flags)
		}
		return
	}
	bits := uint(32)
	if flags&0x04 != 0 {
		bits = 64
	}
	r.uleb(bits)
	if flags&0x01 != 0 {
		r.uleb(bits)
	}
	if flags&0x08 != 0 {
		r.u32()
	}
}

func appendU32(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}
