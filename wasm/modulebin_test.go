package wasm

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// shapeModules are WAT modules with memories and tables in every place
// the binary format puts them: imported, defined, exported or not, with
// and without an export section, with custom sections around it.
var shapeModules = map[string]struct {
	wat   string
	shape moduleShape
}{
	"none":                {`(module (func (export "_start")))`, moduleShape{}},
	"no export section":   {`(module (memory 1) (table 2 funcref) (func))`, moduleShape{1, 1}},
	"exported memory":     {testmodule.Print, moduleShape{1, 0}},
	"hidden memory/table": {`(module (memory (export "memory") 1) (memory 2) (table 3 funcref) (table 4 externref) (func (export "_start")))`, moduleShape{2, 2}},
	"imports": {`(module
  (import "env" "f" (func (param i32)))
  (import "env" "t" (table 1 funcref))
  (import "env" "g" (global (mut i64)))
  (import "env" "m" (memory 1 2))
  (import "env" "m64" (memory i64 1))
  (import "env" "t64" (table i64 1 2 externref))
  (memory 1)
  (global i32 (i32.const 0))
  (func (export "_start"))
  (start 1))`, moduleShape{3, 2}},
	"memory64 and table64": {`(module (memory i64 1 100) (table i64 5 funcref) (data (i64.const 0) "x") (elem (table 0) (i64.const 0) func 0) (func (export "_start")))`, moduleShape{1, 1}},
}

func wasmtimeExports(t testing.TB, engine *wasmtime.Engine, b []byte) []string {
	t.Helper()
	mod, err := wasmtime.NewModule(engine, b)
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	defer mod.Close()
	var names []string
	for _, e := range mod.Exports() {
		kind := "func"
		switch {
		case e.Type().MemoryType() != nil:
			kind = "memory"
		case e.Type().TableType() != nil:
			kind = "table"
		case e.Type().GlobalType() != nil:
			kind = "global"
		}
		names = append(names, kind+" "+e.Name())
	}
	return names
}

func TestExportMemoriesAndTables(t *testing.T) {
	engine := wasmtime.NewEngineWithConfig(engineConfig(1 << 20))
	defer engine.Close()
	modules := map[string]struct {
		bin   []byte
		shape moduleShape
	}{"go hello": {testmodule.Hello(t), moduleShape{1, 1}}}
	for name, m := range shapeModules {
		modules[name] = struct {
			bin   []byte
			shape moduleShape
		}{testmodule.Wat(t, m.wat), m.shape}
	}
	// Custom sections before, between and after the others stay.
	modules["custom sections"] = struct {
		bin   []byte
		shape moduleShape
	}{testmodule.WithCustomSection(testmodule.Wat(t, `(module (memory 1) (table 1 funcref) (func) (@custom "first" (before first) "x") (@custom "mid" (after table) "y"))`), "last", []byte("z")), moduleShape{1, 1}}

	for name, m := range modules {
		t.Run(name, func(t *testing.T) {
			out, shape, err := exportMemoriesAndTables(m.bin)
			if err != nil {
				t.Fatal(err)
			}
			if shape != m.shape {
				t.Fatalf("shape %+v, want %+v", shape, m.shape)
			}
			if err := wasmtime.ModuleValidate(engine, out); err != nil {
				t.Fatalf("rewritten module: %v", err)
			}
			want := wasmtimeExports(t, engine, m.bin)
			for i := 0; i < shape.memories; i++ {
				want = append(want, "memory "+reservedMemoryName(i))
			}
			for i := 0; i < shape.tables; i++ {
				want = append(want, "table "+reservedTableName(i))
			}
			if got := wasmtimeExports(t, engine, out); !slices.Equal(got, want) {
				t.Fatalf("exports:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if shape == (moduleShape{}) && string(out) != string(m.bin) {
				t.Error("a module without memories or tables was rewritten")
			}
		})
	}
}

func TestExportMemoriesAndTablesRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		bin  []byte
		says string
	}{
		"reserved name":  {testmodule.Wat(t, `(module (memory (export "wasmcri.internal/memory/0") 1))`), "reserves"},
		"reserved func":  {testmodule.Wat(t, `(module (func (export "wasmcri.internal/x")))`), "reserves"},
		"component":      {[]byte("\x00asm\x0d\x00\x01\x00"), "component"},
		"not wasm":       {[]byte("#!/bin/sh\necho hi\n"), "magic"},
		"truncated":      {testmodule.Wat(t, testmodule.Print)[:30], "unexpected end"},
		"long leb":       {[]byte("\x00asm\x01\x00\x00\x00\x05\x06\x81\x80\x80\x80\x80\x00"), "too long"},
		"101 memories":   {testmodule.Wat(t, "(module "+strings.Repeat("(memory 0)", 101)+")"), "over the limit"},
		"twice":          {[]byte("\x00asm\x01\x00\x00\x00\x05\x01\x00\x05\x01\x00"), "twice"},
		"unknown kind":   {[]byte("\x00asm\x01\x00\x00\x00\x02\x06\x01\x01a\x01b\x09"), "unknown kind"},
		"unknown id":     {[]byte("\x00asm\x01\x00\x00\x00\x0e\x00"), "unknown section"},
		"trailing bytes": {[]byte("\x00asm\x01\x00\x00\x00\x07\x02\x00\x00"), "trailing"},
	} {
		_, _, err := exportMemoriesAndTables(tc.bin)
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: err = %v, want one saying %q", name, err, tc.says)
		}
	}
}

// withProbe is module with one more export: of index index of kind, which
// wasmtime accepts only if the module has more than index of them.
func withProbe(t testing.TB, module []byte, kind byte, index int) []byte {
	m, err := parseModule(module)
	if err != nil {
		t.Fatal(err)
	}
	return m.withExports([]exportEntry{{"probe", kind, uint32(index)}})
}

// FuzzExportMemoriesAndTables feeds arbitrary bytes to the module
// rewriter, which runs on every module a pod brings. It must not panic;
// it must accept every module wasmtime finds valid (unless the module uses
// the reserved names); when it accepts, wasmtime must find the output
// valid exactly when it finds the input valid; and for a valid module the
// counts must be exact: an export of one more memory, or one more table,
// than counted is invalid.
func FuzzExportMemoriesAndTables(f *testing.F) {
	f.Add(testmodule.Hello(f))
	for _, m := range shapeModules {
		f.Add(testmodule.Wat(f, m.wat))
	}
	for _, wat := range []string{testmodule.Trap, testmodule.Spin, testmodule.Print, testmodule.NoStart, testmodule.UnknownImport, testmodule.StartSpin, startPrintThenSpin, warmupWAT} {
		f.Add(testmodule.Wat(f, wat))
	}
	engine := wasmtime.NewEngineWithConfig(engineConfig(1 << 20))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, shape, err := exportMemoriesAndTables(in)
		validIn := wasmtime.ModuleValidate(engine, in) == nil
		if err != nil {
			if validIn && !errors.Is(err, errReservedExport) {
				t.Fatalf("refused a valid module: %v", err)
			}
			return
		}
		if validOut := wasmtime.ModuleValidate(engine, out) == nil; validOut != validIn {
			t.Fatalf("input valid %v, output valid %v", validIn, validOut)
		}
		if !validIn {
			return
		}
		for _, probe := range []struct {
			kind  byte
			count int
		}{{externMemory, shape.memories}, {externTable, shape.tables}} {
			if wasmtime.ModuleValidate(engine, withProbe(t, in, probe.kind, probe.count)) == nil {
				t.Fatalf("counted %d of kind %d, but index %d exists", probe.count, probe.kind, probe.count)
			}
		}
	})
}

// The shape of the Go test module, for the record.
func TestGoModuleShape(t *testing.T) {
	engine := wasmtime.NewEngineWithConfig(engineConfig(1 << 20))
	defer engine.Close()
	out, shape, err := exportMemoriesAndTables(testmodule.Hello(t))
	if err != nil {
		t.Fatal(err)
	}
	mod, err := wasmtime.NewModule(engine, out)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	var desc []string
	for _, e := range mod.Exports() {
		if tt := e.Type().TableType(); tt != nil {
			hasMax, max := tt.Maximum()
			desc = append(desc, fmt.Sprintf("table %s: min %d elements (max %v %d)", e.Name(), tt.Minimum(), hasMax, max))
		}
		if mt := e.Type().MemoryType(); mt != nil {
			desc = append(desc, fmt.Sprintf("memory %s: min %d pages", e.Name(), mt.Minimum()))
		}
	}
	t.Logf("go test module: %+v; %s", shape, strings.Join(desc, "; "))
}
