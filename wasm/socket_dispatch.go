package wasm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// An instance with listeners needs WASI calls on socket fds, which
// wasmtime's C API does not have: we implement them in Go (sockets.go)
// and keep wasmtime's own WASI for every other fd. Imports bind by name,
// not by fd, so a guest's fd_read must reach a function that looks at the
// fd first. Two small generated modules, compiled once per runtime, do
// that without a trip through Go for ordinary fds:
//
//   - the dispatch module supplies all of the guest's WASI imports. Calls
//     without an fd are wasmtime's (or our poll_oneoff) re-exported as
//     they are, so the guest calls them directly. Calls with an fd test it:
//     a socket fd goes to Go, or gets a fixed errno where a socket has no
//     such operation; any other fd goes through a funcref table to the
//     trampoline;
//   - the trampoline calls wasmtime's original function. wasmtime finds
//     buffers through the calling instance's "memory" export, which the
//     dispatch module cannot have (it exists before the guest), so the
//     trampoline imports the guest's memory and exports it as "memory".
//
// Socket fds are the listeners, at 3 … 3+n-1, and accepted connections,
// numbered from firstConnFD: wasmtime numbers its own fds densely from 0
// and never gets there, and its preopens, which it numbers from 3, are
// pushed after the listeners by placeholders (see Start).

// firstConnFD is the first fd number of an accepted connection.
const firstConnFD = 1 << 24

// wasiFunc is a WASI preview1 function as wasmtime defines it.
type wasiFunc struct {
	name string
	// params are the parameter types: 'i' i32, 'I' i64.
	params string
	// noResult marks proc_exit, the one function without an errno.
	noResult bool
	// fds are the positions of the parameters that are fds.
	fds []int
	// onSocket is what a socket fd gets: goSocket for our Go function of
	// the same name, else this errno.
	onSocket int32
}

// goSocket marks a function that sockets.go implements for socket fds.
const goSocket = -1

// WASI errnos.
const (
	errnoAgain    = 6
	errnoBadf     = 8
	errnoIO       = 29
	errnoMfile    = 33
	errnoNotdir   = 54
	errnoNotsock  = 57
	errnoNotsup   = 58
	errnoSpipe    = 70
	errnoConnrset = 15
)

// wasiFuncs is the whole of wasi_snapshot_preview1. Instantiating the
// dispatch module checks every type here against wasmtime's.
var wasiFuncs = []wasiFunc{
	{name: "args_get", params: "ii"},
	{name: "args_sizes_get", params: "ii"},
	{name: "environ_get", params: "ii"},
	{name: "environ_sizes_get", params: "ii"},
	{name: "clock_res_get", params: "ii"},
	{name: "clock_time_get", params: "iIi"},
	{name: "fd_advise", params: "iIIi", fds: []int{0}, onSocket: errnoSpipe},
	{name: "fd_allocate", params: "iII", fds: []int{0}, onSocket: errnoSpipe},
	{name: "fd_close", params: "i", fds: []int{0}, onSocket: goSocket},
	{name: "fd_datasync", params: "i", fds: []int{0}, onSocket: errnoInval},
	{name: "fd_fdstat_get", params: "ii", fds: []int{0}, onSocket: goSocket},
	{name: "fd_fdstat_set_flags", params: "ii", fds: []int{0}, onSocket: goSocket},
	{name: "fd_fdstat_set_rights", params: "iII", fds: []int{0}, onSocket: errnoNotsup},
	{name: "fd_filestat_get", params: "ii", fds: []int{0}, onSocket: goSocket},
	{name: "fd_filestat_set_size", params: "iI", fds: []int{0}, onSocket: errnoInval},
	{name: "fd_filestat_set_times", params: "iIIi", fds: []int{0}, onSocket: errnoNotsup},
	{name: "fd_pread", params: "iiiIi", fds: []int{0}, onSocket: errnoSpipe},
	{name: "fd_prestat_get", params: "ii", fds: []int{0}, onSocket: goSocket},
	{name: "fd_prestat_dir_name", params: "iii", fds: []int{0}, onSocket: errnoInval},
	{name: "fd_pwrite", params: "iiiIi", fds: []int{0}, onSocket: errnoSpipe},
	{name: "fd_read", params: "iiii", fds: []int{0}, onSocket: goSocket},
	{name: "fd_readdir", params: "iiiIi", fds: []int{0}, onSocket: errnoNotdir},
	{name: "fd_renumber", params: "ii", fds: []int{0, 1}, onSocket: errnoNotsup},
	{name: "fd_seek", params: "iIii", fds: []int{0}, onSocket: errnoSpipe},
	{name: "fd_sync", params: "i", fds: []int{0}, onSocket: errnoInval},
	{name: "fd_tell", params: "ii", fds: []int{0}, onSocket: errnoSpipe},
	{name: "fd_write", params: "iiii", fds: []int{0}, onSocket: goSocket},
	{name: "path_create_directory", params: "iii", fds: []int{0}, onSocket: errnoNotdir},
	{name: "path_filestat_get", params: "iiiii", fds: []int{0}, onSocket: errnoNotdir},
	{name: "path_filestat_set_times", params: "iiiiIIi", fds: []int{0}, onSocket: errnoNotdir},
	{name: "path_link", params: "iiiiiii", fds: []int{0, 4}, onSocket: errnoNotdir},
	{name: "path_open", params: "iiiiiIIii", fds: []int{0}, onSocket: errnoNotdir},
	{name: "path_readlink", params: "iiiiii", fds: []int{0}, onSocket: errnoNotdir},
	{name: "path_remove_directory", params: "iii", fds: []int{0}, onSocket: errnoNotdir},
	{name: "path_rename", params: "iiiiii", fds: []int{0, 3}, onSocket: errnoNotdir},
	{name: "path_symlink", params: "iiiii", fds: []int{2}, onSocket: errnoNotdir},
	{name: "path_unlink_file", params: "iii", fds: []int{0}, onSocket: errnoNotdir},
	{name: "poll_oneoff", params: "iiii"},
	{name: "proc_exit", params: "i", noResult: true},
	{name: "proc_raise", params: "i"},
	{name: "sched_yield", params: ""},
	{name: "random_get", params: "ii"},
	// The socket calls are ours for every fd: a non-socket gets ENOTSOCK.
	{name: "sock_accept", params: "iii", onSocket: goSocket},
	{name: "sock_recv", params: "iiiiii", onSocket: goSocket},
	{name: "sock_send", params: "iiiii", onSocket: goSocket},
	{name: "sock_shutdown", params: "ii", onSocket: goSocket},
}

// socketModule is the import module of our Go socket functions.
const socketModule = "wasmcri_sockets"

func (f wasiFunc) signature() string {
	var b strings.Builder
	if f.params != "" {
		b.WriteString("(param")
		for _, p := range f.params {
			if p == 'I' {
				b.WriteString(" i64")
			} else {
				b.WriteString(" i32")
			}
		}
		b.WriteString(")")
	}
	if !f.noResult {
		b.WriteString(" (result i32)")
	}
	return b.String()
}

// delegated reports whether f may reach wasmtime's own function through
// the trampoline: the calls that take an fd.
func (f wasiFunc) delegated() bool { return len(f.fds) > 0 }

func (f wasiFunc) args() string {
	var b strings.Builder
	for i := range f.params {
		fmt.Fprintf(&b, " (local.get %d)", i)
	}
	return b.String()
}

// dispatchWat generates the dispatch module. Its table slot k holds the
// trampoline's wrapper of the k-th delegated function; its global
// "listeners" is the number of listeners, set before the guest runs.
func dispatchWat() string {
	var b strings.Builder
	b.WriteString("(module\n")
	for _, f := range wasiFuncs {
		fmt.Fprintf(&b, "  (type $t_%s (func %s))\n", f.name, f.signature())
	}
	for _, f := range wasiFuncs {
		switch {
		case strings.HasPrefix(f.name, "sock_"):
			fmt.Fprintf(&b, "  (import %q %q (func $%s (type $t_%s)))\n", socketModule, f.name, f.name, f.name)
		case !f.delegated():
			fmt.Fprintf(&b, "  (import \"wasi_snapshot_preview1\" %q (func $%s (type $t_%s)))\n", f.name, f.name, f.name)
		case f.onSocket == goSocket:
			fmt.Fprintf(&b, "  (import %q %q (func $go_%s (type $t_%s)))\n", socketModule, f.name, f.name, f.name)
		}
	}
	n := 0
	for _, f := range wasiFuncs {
		if f.delegated() {
			n++
		}
	}
	fmt.Fprintf(&b, "  (table (export \"wasmcri_trampolines\") %d %d funcref)\n", n, n)
	b.WriteString("  (global $listeners (export \"wasmcri_listeners\") (mut i32) (i32.const 0))\n")
	fmt.Fprintf(&b, `  (func $is_sock (param $fd i32) (result i32)
    (i32.or (i32.ge_u (local.get $fd) (i32.const %d))
            (i32.lt_u (i32.sub (local.get $fd) (i32.const 3)) (global.get $listeners))))
`, firstConnFD)
	slot := 0
	for _, f := range wasiFuncs {
		if !f.delegated() {
			fmt.Fprintf(&b, "  (export %q (func $%s))\n", f.name, f.name)
			continue
		}
		test := fmt.Sprintf("(call $is_sock (local.get %d))", f.fds[0])
		for _, p := range f.fds[1:] {
			test = fmt.Sprintf("(i32.or %s (call $is_sock (local.get %d)))", test, p)
		}
		onSocket := fmt.Sprintf("(i32.const %d)", f.onSocket)
		if f.onSocket == goSocket {
			onSocket = fmt.Sprintf("(call $go_%s%s)", f.name, f.args())
		}
		fmt.Fprintf(&b, "  (func (export %q) (type $t_%s)\n    (if (result i32) %s\n      (then %s)\n      (else (call_indirect (type $t_%s)%s (i32.const %d)))))\n",
			f.name, f.name, test, onSocket, f.name, f.args(), slot)
		slot++
	}
	b.WriteString(")\n")
	return b.String()
}

// trampolineWat generates the trampoline module: wasmtime's delegated
// functions, called with the guest's memory as the caller's "memory".
func trampolineWat() string {
	var b strings.Builder
	b.WriteString("(module\n  (import \"guest\" \"memory\" (memory $m 0))\n  (export \"memory\" (memory $m))\n")
	for _, f := range wasiFuncs {
		if f.delegated() {
			fmt.Fprintf(&b, "  (import \"wasi_snapshot_preview1\" %q (func $%s %s))\n", f.name, f.name, f.signature())
		}
	}
	for _, f := range wasiFuncs {
		if f.delegated() {
			fmt.Fprintf(&b, "  (func (export %q) %s (call $%s%s))\n", f.name, f.signature(), f.name, f.args())
		}
	}
	b.WriteString(")\n")
	return b.String()
}

// socketHelpers are the dispatch and trampoline modules compiled for the
// runtime's engine, and the linker that instantiates them: wasmtime's
// WASI, our poll_oneoff and our socket functions.
type socketHelpers struct {
	dispatch, trampoline *wasmtime.Module
	linker               *wasmtime.Linker
	// slots is the number of delegated functions: the dispatch table's size.
	slots int
	// placeholder is an empty directory preopened at the listeners' fds.
	placeholder string
}

type helperCache struct {
	once sync.Once
	h    *socketHelpers
	err  error
}

// socketHelpers compiles the helper modules on first use (a few ms, once
// per runtime).
func (r *Runtime) socketHelpers() (*socketHelpers, error) {
	r.helpers.once.Do(func() {
		r.helpers.h, r.helpers.err = newSocketHelpers(r.engine)
		if r.helpers.err != nil {
			return
		}
		// Read-only and empty: nothing can reach it, and nothing is in it.
		r.helpers.h.placeholder = filepath.Join(r.cacheDir, "listener-placeholder")
		if err := os.Mkdir(r.helpers.h.placeholder, 0o500); err != nil && !os.IsExist(err) {
			r.helpers.err = err
		}
	})
	return r.helpers.h, r.helpers.err
}

func newSocketHelpers(engine *wasmtime.Engine) (*socketHelpers, error) {
	h := &socketHelpers{}
	for _, m := range []struct {
		wat string
		mod **wasmtime.Module
	}{{dispatchWat(), &h.dispatch}, {trampolineWat(), &h.trampoline}} {
		bin, err := wasmtime.Wat2Wasm(m.wat)
		if err != nil {
			return nil, fmt.Errorf("socket helper module: %w", err)
		}
		if *m.mod, err = wasmtime.NewModule(engine, bin); err != nil {
			return nil, fmt.Errorf("socket helper module: %w", err)
		}
	}
	for _, f := range wasiFuncs {
		if f.delegated() {
			h.slots++
		}
	}
	h.linker = wasmtime.NewLinker(engine)
	if err := h.linker.DefineWasi(); err != nil {
		return nil, err
	}
	if err := definePollOneoff(h.linker); err != nil {
		return nil, err
	}
	if err := defineSocketFuncs(h.linker); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *socketHelpers) close() {
	if h == nil {
		return
	}
	h.linker.Close()
	h.dispatch.Close()
	h.trampoline.Close()
}

// instantiate makes the guest of an instance with listeners: the dispatch
// module, the guest linked against it, then the trampoline on the guest's
// memory, whose functions fill the dispatch table.
func (h *socketHelpers) instantiate(i *Instance, module *wasmtime.Module) (*wasmtime.Instance, error) {
	store := i.store
	dispatch, err := h.linker.Instantiate(store, h.dispatch)
	if err != nil {
		return nil, fmt.Errorf("socket dispatch: %w", err)
	}
	if err := dispatch.GetExport(store, "wasmcri_listeners").Global().Set(store, wasmtime.ValI32(int32(i.socks.listeners))); err != nil {
		return nil, err
	}
	linker := wasmtime.NewLinker(i.engine)
	defer linker.Close()
	if err := linker.DefineInstance(store, "wasi_snapshot_preview1", dispatch); err != nil {
		return nil, err
	}
	guest, err := linker.Instantiate(store, module)
	if err != nil {
		return nil, err
	}
	mem := guest.GetExport(store, "memory")
	if mem == nil || mem.Memory() == nil {
		// WASI needs it too: wasmtime's own calls would fail the same way.
		return guest, nil
	}
	i.socks.memory = mem.Memory()
	imports := []wasmtime.AsExtern{mem.Memory()}
	for _, f := range wasiFuncs {
		if f.delegated() {
			imports = append(imports, h.linker.Get(store, "wasi_snapshot_preview1", f.name))
		}
	}
	tramp, err := wasmtime.NewInstance(store, h.trampoline, imports)
	if err != nil {
		return nil, fmt.Errorf("socket trampoline: %w", err)
	}
	table := dispatch.GetExport(store, "wasmcri_trampolines").Table()
	slot := uint64(0)
	for _, f := range wasiFuncs {
		if !f.delegated() {
			continue
		}
		if err := table.Set(store, slot, wasmtime.ValFuncref(tramp.GetFunc(store, f.name))); err != nil {
			return nil, err
		}
		slot++
	}
	return guest, nil
}
