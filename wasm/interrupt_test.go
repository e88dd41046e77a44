package wasm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// This package reads wasmtime-go's Store as a pointer to its C store: the
// layout check holds and the pointer gives the store's own context.
func TestStorePointer(t *testing.T) {
	if storeLayout != nil {
		t.Fatal(storeLayout)
	}
	engine := wasmtime.NewEngineWithConfig(engineConfig(1 << 20))
	defer engine.Close()
	store := wasmtime.NewStore(engine)
	if _, err := cStore(store); err != nil {
		t.Fatal(err)
	}
	store.Close()
	if _, err := cStore(store); err == nil {
		t.Fatal("a closed store gave a pointer")
	}
}

// On one engine, epoch increments alone end no store whose flag is clear;
// setting one store's flag ends that store's code at the next increment,
// with the callback's error, and no other.
func TestStopFlagEndsOnlyItsStore(t *testing.T) {
	engine := wasmtime.NewEngineWithConfig(engineConfig(1 << 20))
	defer engine.Close()
	mod, err := wasmtime.NewModule(engine, testmodule.Wat(t, `(module (func (export "spin") (loop (br 0))))`))
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	type ended struct {
		store int
		err   error
	}
	done := make(chan ended, 2)
	var flags []stopFlag
	for k := range 2 {
		flag := newStopFlag()
		defer flag.free()
		flags = append(flags, flag)
		store := wasmtime.NewStore(engine)
		defer store.Close()
		store.SetEpochDeadline(1)
		if err := stopOnFlag(store, flag); err != nil {
			t.Fatal(err)
		}
		inst, err := wasmtime.NewInstance(store, mod, nil)
		if err != nil {
			t.Fatal(err)
		}
		spin := inst.GetFunc(store, "spin")
		go func() {
			_, err := spin.Call(store)
			done <- ended{k, err}
		}()
	}
	// Ends everything still running at return, before the stores close.
	stopAll := func() {
		for _, f := range flags {
			f.set()
		}
		engine.IncrementEpoch()
	}
	noneEnds := func(what string) {
		t.Helper()
		select {
		case e := <-done:
			stopAll()
			<-done
			t.Fatalf("%s ended store %d: %v", what, e.store, e.err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	time.Sleep(50 * time.Millisecond)
	for range 1000 {
		engine.IncrementEpoch()
	}
	noneEnds("increments with no flag set")

	flags[1].set()
	engine.IncrementEpoch()
	select {
	case e := <-done:
		if e.store != 1 || e.err == nil || !strings.Contains(e.err.Error(), "stopped") {
			stopAll()
			<-done
			t.Fatalf("store %d ended with %v, want store 1 stopped", e.store, e.err)
		}
	case <-time.After(5 * time.Second):
		stopAll()
		t.Fatal("the flagged store did not stop")
	}
	noneEnds("stopping the other store")

	flags[0].set()
	engine.IncrementEpoch()
	select {
	case e := <-done:
		if e.store != 0 || e.err == nil {
			t.Fatalf("store %d ended with %v, want store 0 stopped", e.store, e.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the last store did not stop")
	}
}

// interrupt.go declares the wasmtime C functions it calls itself (the
// headers are in the module cache, out of cgo's reach): the declarations
// in wasmtime-go's headers must still be these, or the calls would not
// match the library.
func TestDeclarationsMatchWasmtimeHeaders(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/bytecodealliance/wasmtime-go/v39").Output()
	if err != nil {
		t.Fatalf("find wasmtime-go: %v", err)
	}
	include := filepath.Join(strings.TrimSpace(string(out)), "build", "include", "wasmtime")
	squeeze := func(s string) string { return strings.Join(strings.Fields(s), "") }
	for file, decls := range map[string][]string{
		"store.h": {
			`typedef uint8_t wasmtime_update_deadline_kind_t;`,
			`#define WASMTIME_UPDATE_DEADLINE_CONTINUE 0`,
			`WASM_API_EXTERN void wasmtime_store_epoch_deadline_callback(wasmtime_store_t *store,
				wasmtime_error_t *(*func)(wasmtime_context_t *context, void *data,
					uint64_t *epoch_deadline_delta, wasmtime_update_deadline_kind_t *update_kind),
				void *data, void (*finalizer)(void *));`,
			`WASM_API_EXTERN wasmtime_context_t *wasmtime_store_context(wasmtime_store_t *store);`,
		},
		"error.h": {`WASM_API_EXTERN wasmtime_error_t *wasmtime_error_new(const char *);`},
	} {
		b, err := os.ReadFile(filepath.Join(include, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range decls {
			if !strings.Contains(squeeze(string(b)), squeeze(d)) {
				t.Errorf("%s no longer declares %s", file, d)
			}
		}
	}
}
