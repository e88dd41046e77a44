package wasm

import (
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
