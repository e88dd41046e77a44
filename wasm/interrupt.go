package wasm

// Stopping one instance among many on a shared engine.
//
// Instances of a module share one Engine and one loaded Module (see
// shared.go), so Stop cannot simply trap everything past the engine's next
// epoch: every other instance on the engine would trap too. Instead each
// store gets an epoch deadline callback (wasmtime's C API has it; wasmtime-go
// v39 does not wrap it) that wasmtime calls when the store reaches its
// deadline. The callback is C code reading the instance's stop flag, C
// memory the instance owns: set, it ends the store's wasm code with an
// error; clear, it lets the code go on until the next epoch. Stop sets the
// flag and then increments the epoch, so each running instance takes the
// callback once and only the stopped one ends.
//
// The callback never calls into Go: it runs in the middle of wasm code on
// the instance's thread, where a cgo callback would cost a Go transition.
// Measured on wasmtime 39 (a loop taking the callback at every iteration
// against the same loop never reaching its deadline): about 16ns a call,
// wasmtime's way out of wasm code and back included. A Stop costs every
// other running instance one call; code that never reaches its deadline
// pays nothing for the callback being set.

/*
#include <stdint.h>
#include <stdlib.h>

// The declarations of wasmtime's C API (wasmtime/store.h, wasmtime/error.h)
// this file uses; wasmtime-go links the library that defines them. Its
// headers are in the module cache, out of reach of #include, so
// TestDeclarationsMatchWasmtimeHeaders holds these to them. The struct
// types are opaque here as there.
typedef struct wasmtime_store wasmtime_store_t;
typedef struct wasmtime_context wasmtime_context_t;
typedef struct wasmtime_error wasmtime_error_t;
typedef uint8_t wasmtime_update_deadline_kind_t;
#define WASMTIME_UPDATE_DEADLINE_CONTINUE 0

extern void wasmtime_store_epoch_deadline_callback(wasmtime_store_t *store,
	wasmtime_error_t *(*func)(wasmtime_context_t *context, void *env,
		uint64_t *epoch_deadline_delta, wasmtime_update_deadline_kind_t *update_kind),
	void *env, void (*finalizer)(void *));
extern wasmtime_context_t *wasmtime_store_context(wasmtime_store_t *store);
extern wasmtime_error_t *wasmtime_error_new(const char *message);

// wasmcri_epoch_deadline is every instance store's epoch deadline callback;
// env is the instance's stop flag. wasmtime turns the error it returns into
// the error of the call that was running (the start section's
// instantiation or _start), which resultOf reports as the stop, as it
// does any failure of a stopped instance.
static wasmtime_error_t *wasmcri_epoch_deadline(wasmtime_context_t *context, void *env,
		uint64_t *delta, wasmtime_update_deadline_kind_t *kind) {
	if (__atomic_load_n((uint32_t *)env, __ATOMIC_ACQUIRE)) {
		return wasmtime_error_new("stopped");
	}
	*delta = 1;
	*kind = WASMTIME_UPDATE_DEADLINE_CONTINUE;
	return NULL;
}

// wasmcri_stop_on_flag makes flag the store's stop flag. No finalizer: the
// instance frees the flag itself, once nothing can set it any more.
static void wasmcri_stop_on_flag(void *store, uint32_t *flag) {
	wasmtime_store_epoch_deadline_callback((wasmtime_store_t *)store, wasmcri_epoch_deadline, flag, NULL);
}

static void *wasmcri_store_context(void *store) {
	return wasmtime_store_context((wasmtime_store_t *)store);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// stopFlag is an instance's stop request, in C memory so that wasmtime may
// keep a pointer to it; 0 runs, 1 stops.
type stopFlag struct{ p *C.uint32_t }

func newStopFlag() stopFlag {
	return stopFlag{p: (*C.uint32_t)(C.calloc(1, C.size_t(unsafe.Sizeof(C.uint32_t(0)))))}
}

// set asks the store's code to stop at its next epoch deadline: the
// caller increments the engine's epoch after.
func (f stopFlag) set() { atomic.StoreUint32((*uint32)(unsafe.Pointer(f.p)), 1) }

// free releases the flag; only when no store runs code with it and nothing
// will set it.
func (f stopFlag) free() { C.free(unsafe.Pointer(f.p)) }

// storeLayout is why wasmtime-go's Store cannot be read here, or nil. Its
// only handle on the C store, the field _ptr, is unexported: this package
// reads it as the first word of the struct, which this check (and
// TestStorePointer, which compares the contexts the two pointers give)
// holds wasmtime-go to.
var storeLayout = func() error {
	st := reflect.TypeFor[wasmtime.Store]()
	f, ok := st.FieldByName("_ptr")
	if !ok || f.Offset != 0 || f.Type.Kind() != reflect.Pointer || f.Type.Elem().Name() != "_Ctype_struct_wasmtime_store" {
		return fmt.Errorf("wasmtime-go's Store is no longer a *C.wasmtime_store_t first: the epoch deadline callback cannot be set")
	}
	return nil
}()

// cStore is the wasmtime_store_t of store.
func cStore(store *wasmtime.Store) (unsafe.Pointer, error) {
	if storeLayout != nil {
		return nil, storeLayout
	}
	p := *(*unsafe.Pointer)(unsafe.Pointer(store))
	if p == nil {
		return nil, errors.New("the store is closed")
	}
	// The context wasmtime-go hands out is the one of the same C store.
	if C.wasmcri_store_context(p) != unsafe.Pointer(store.Context()) {
		return nil, errors.New("wasmtime-go's Store does not point at its wasmtime_store_t")
	}
	runtime.KeepAlive(store)
	return p, nil
}

// stopOnFlag sets store's epoch deadline callback to end its code once
// flag is set, and to let it go on otherwise. The store's deadline still
// has to be set (SetEpochDeadline) for the callback to be reached.
func stopOnFlag(store *wasmtime.Store, flag stopFlag) error {
	p, err := cStore(store)
	if err != nil {
		return err
	}
	C.wasmcri_stop_on_flag(p, flag.p)
	runtime.KeepAlive(store)
	return nil
}
