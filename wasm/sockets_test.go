package wasm

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/wasmcri/wasmcri/internal/testmodule"
	"github.com/wasmcri/wasmcri/internal/testweb"
	"golang.org/x/sys/unix"
)

// listen is a non-blocking listening socket on 127.0.0.1 and its port.
func listen(t testing.TB) (Listener, int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return Listener{FD: fd, Name: "http"}, sa.(*unix.SockaddrInet4).Port
}

// get fetches url and returns its body, failing the test on an error.
func get(t *testing.T, client *http.Client, url string) []byte {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return b
}

// A Go net/http server built for wasip1 serves on the listener it is
// handed: small and large bodies, requests and uploads from 8 clients at
// once; Stop ends it while it waits in its poller, and the port is free
// again when it is done.
func TestGoServerServesOnItsListener(t *testing.T) {
	r := newRuntime(t)
	l, port := listen(t)
	inst, out := run(t, r, testmodule.Webserver(t), Spec{Args: []string{"webserver"}, Env: []string{"LISTEN_FDS=9"}, Listeners: []Listener{l}})
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer client.CloseIdleConnections()

	if !poll(20*time.Second, func() bool { return strings.Contains(out.stdout.String(), "serving on") }) {
		t.Fatalf("the server never started: %q %q", out.stdout.String(), out.stderr.String())
	}
	if body := string(get(t, client, base+"/")); !strings.HasPrefix(body, "Hello from WebAssembly") {
		t.Fatalf("GET /: %q", body)
	}

	if err := testweb.Load(base, 8, 1, 8<<20); err != nil {
		t.Error(err)
	}

	// Idle in its poller, with connections open: Stop ends it.
	inst.Stop()
	if res := wait(t, inst, 20*time.Second); !res.Stopped {
		t.Fatalf("stopped server: %+v", res)
	}
	// Its listener is closed: the port can be bound again.
	again, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("port of the ended server: %v", err)
	}
	again.Close()
}

// A module with listeners sees LISTEN_FDS and LISTEN_FDNAMES (the spec's
// own values replaced), and its preopened directories after the listeners,
// with files at wasmtime's own speed path.
func TestListenersComeBeforePreopens(t *testing.T) {
	r := newRuntime(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("file content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, _ := listen(t)
	b, _ := listen(t)
	b.Name = "metrics"
	inst, out := run(t, r, testmodule.Hello(t), Spec{
		Args:      []string{"hello", "cat", "/data/f"},
		Env:       []string{"LISTEN_FDS=7", "LISTEN_PID=1"},
		Dirs:      []Dir{{Host: dir, Guest: "/data"}},
		Listeners: []Listener{a, b},
	})
	if res := wait(t, inst, 20*time.Second); res.ExitCode != 0 {
		t.Fatalf("exit %d, stderr %s", res.ExitCode, out.stderr.String())
	}
	if !out.stdout.has("file content") {
		t.Fatalf("cat through the preopen after two listeners: %q %q", out.stdout.String(), out.stderr.String())
	}

	env, envOut := run(t, r, testmodule.Hello(t), Spec{Args: []string{"hello"}, Env: []string{"LISTEN_FDS=7", "LISTEN_PID=1"}, Listeners: []Listener{mustListen(t)}})
	wait(t, env, 20*time.Second)
	got := envOut.stdout.String()
	for _, want := range []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=http"} {
		if !strings.Contains(got, want) {
			t.Errorf("environment lacks %s:\n%s", want, got)
		}
	}
	for _, gone := range []string{"LISTEN_FDS=7", "LISTEN_PID="} {
		if strings.Contains(got, gone) {
			t.Errorf("environment keeps %s:\n%s", gone, got)
		}
	}
}

func mustListen(t *testing.T) Listener {
	l, _ := listen(t)
	return l
}

// socketCalls probes what WASI calls on a listener fd answer; each result
// is stored as an i32 at 0, 4, 8, … and printed as a line "name=errno".
const socketCalls = `(module
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_renumber" (func $renumber (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "x")
  (func $out (param $code i32) (param $tag i32)
    ;; "<tag>=<code as two digits>\n" at 256, written to stdout
    (i32.store8 (i32.const 256) (local.get $tag))
    (i32.store8 (i32.const 257) (i32.const 61))
    (i32.store8 (i32.const 258) (i32.add (i32.const 48) (i32.div_u (local.get $code) (i32.const 10))))
    (i32.store8 (i32.const 259) (i32.add (i32.const 48) (i32.rem_u (local.get $code) (i32.const 10))))
    (i32.store8 (i32.const 260) (i32.const 10))
    (i32.store (i32.const 128) (i32.const 256))
    (i32.store (i32.const 132) (i32.const 5))
    (drop (call $write (i32.const 1) (i32.const 128) (i32.const 1) (i32.const 136))))
  (func (export "_start")
    ;; f: fd_fdstat_get(3); t: the filetype it gave; l: its flags
    (call $out (call $fdstat (i32.const 3) (i32.const 0)) (i32.const 102))
    (call $out (i32.load8_u (i32.const 0)) (i32.const 116))
    (call $out (i32.load16_u (i32.const 2)) (i32.const 108))
    ;; p: fd_prestat_get(3); g: its tag
    (call $out (call $prestat (i32.const 3) (i32.const 32)) (i32.const 112))
    (call $out (i32.load8_u (i32.const 32)) (i32.const 103))
    ;; o: path_open(3, …)
    (call $out (call $open (i32.const 3) (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 64)) (i32.const 111))
    ;; s: fd_seek(3)
    (call $out (call $seek (i32.const 3) (i64.const 0) (i32.const 0) (i32.const 64)) (i32.const 115))
    ;; a: sock_accept(3) on the non-blocking listener, nobody connecting
    (call $out (call $accept (i32.const 3) (i32.const 0) (i32.const 64)) (i32.const 97))
    ;; n: sock_accept(1), not a socket; e: sock_accept(3) into memory out of bounds
    (call $out (call $accept (i32.const 1) (i32.const 0) (i32.const 64)) (i32.const 110))
    (call $out (call $accept (i32.const 3) (i32.const 0) (i32.const 65534)) (i32.const 101))
    ;; r: fd_renumber(1, 3), stdout onto the listener
    (call $out (call $renumber (i32.const 1) (i32.const 3)) (i32.const 114))
    ;; c: fd_close(3); b: fd_read(3) after it; z: fd_fdstat_get(16777216), never opened
    (call $out (call $close (i32.const 3)) (i32.const 99))
    (i32.store (i32.const 128) (i32.const 512))
    (i32.store (i32.const 132) (i32.const 1))
    (call $out (call $read (i32.const 3) (i32.const 128) (i32.const 1) (i32.const 64)) (i32.const 98))
    (call $out (call $fdstat (i32.const 16777216) (i32.const 0)) (i32.const 122))))`

// The socket side of the fd calls answers as a socket would, and every
// other call on a socket fd an errno, never wasmtime's placeholder
// directory behind it.
func TestSocketFDCalls(t *testing.T) {
	r := newRuntime(t)
	inst, out := run(t, r, testmodule.Wat(t, socketCalls), Spec{Listeners: []Listener{mustListen(t)}})
	if res := wait(t, inst, 20*time.Second); res.ExitCode != 0 {
		t.Fatalf("%+v %s", res, out.stderr.String())
	}
	want := []string{
		"f=00", "t=06", "l=04", // a stream socket, non-blocking
		"p=00", "g=01", // a preopen that is not a directory: scans go on
		"o=54", "s=70", // ENOTDIR, ESPIPE
		"a=06",         // EAGAIN
		"n=57", "e=21", // ENOTSOCK, EFAULT
		"r=58",                 // ENOTSUP
		"c=00", "b=08", "z=08", // closed: EBADF
	}
	if got := out.stdout.lines(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}

// blockingAccept makes its listener blocking, then accepts: with nobody
// connecting it waits in the host for ever, until Stop.
const blockingAccept = `(module
  (import "wasi_snapshot_preview1" "fd_fdstat_set_flags" (func $setfl (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (if (call $setfl (i32.const 3) (i32.const 0)) (then (call $exit (i32.const 3))))
    (call $exit (i32.add (i32.const 10) (call $accept (i32.const 3) (i32.const 0) (i32.const 64))))))`

// A module blocked in sock_accept on a blocking listener is stopped like
// any other; one that is connected to accepts and goes on.
func TestStopEndsBlockingAccept(t *testing.T) {
	r := newRuntime(t)
	module := testmodule.Wat(t, blockingAccept)

	blocked, _ := run(t, r, module, Spec{Listeners: []Listener{mustListen(t)}})
	// Blocked or not yet there: either way Stop must end it.
	if !poll(10*time.Second, func() bool { return blocked.Stats().CPU > 0 }) {
		t.Fatal("the instance never ran")
	}
	blocked.Stop()
	if res := wait(t, blocked, 20*time.Second); !res.Stopped {
		t.Fatalf("stopped in accept: %+v", res)
	}

	l, port := listen(t)
	served, _ := run(t, r, module, Spec{Listeners: []Listener{l}})
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if res := wait(t, served, 20*time.Second); res.ExitCode != 10 {
		t.Fatalf("accepting instance: %+v, want exit 10 (accepted)", res)
	}
}

// Whatever a module passes as an iovec list, the buffers are inside its
// memory, or the call fails with an errno.
func FuzzIovecs(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 8, 0, 0, 0, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'}, int32(0), int32(1))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, int32(0), int32(1))
	f.Add([]byte{}, int32(-8), int32(-1))
	f.Fuzz(func(t *testing.T, data []byte, iovs, n int32) {
		bufs, errno := iovecs(data, iovs, n)
		if errno != errnoSuccess {
			if bufs != nil {
				t.Fatal("buffers with an errno")
			}
			return
		}
		if n < 0 || n > maxIovecs || len(bufs) > int(n) {
			t.Fatalf("%d buffers of %d iovecs", len(bufs), n)
		}
		for _, b := range bufs {
			if len(b) == 0 {
				t.Fatal("an empty buffer")
			}
			// b shares data's backing array: it must lie inside it.
			start := int(uintptr(unsafe.Pointer(&b[0])) - uintptr(unsafe.Pointer(&data[0])))
			if start < 0 || start+len(b) > len(data) {
				t.Fatalf("buffer [%d,+%d) outside %d bytes", start, len(b), len(data))
			}
		}
	})
}

// blockingEcho makes the calls a Rust std server makes with its listener
// (TcpListener::from_raw_fd(3), then accept): a blocking accept, with no
// call before it, a blocking read of up to 64 bytes, the bytes sent back,
// its side shut down, the connection closed; it exits with the count read.
const blockingEcho = `(module
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_send" (func $send (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $shutdown (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $check (param $errno i32) (param $code i32)
    (if (local.get $errno) (then (call $exit (local.get $code)))))
  (func (export "_start") (local $conn i32)
    (call $check (call $accept (i32.const 3) (i32.const 0) (i32.const 0)) (i32.const 102))
    (local.set $conn (i32.load (i32.const 0)))
    ;; one iovec at 16: 64 bytes at 256
    (i32.store (i32.const 16) (i32.const 256))
    (i32.store (i32.const 20) (i32.const 64))
    (call $check (call $read (local.get $conn) (i32.const 16) (i32.const 1) (i32.const 8)) (i32.const 103))
    (i32.store (i32.const 20) (i32.load (i32.const 8)))
    (call $check (call $send (local.get $conn) (i32.const 16) (i32.const 1) (i32.const 0) (i32.const 12)) (i32.const 104))
    (call $check (call $shutdown (local.get $conn) (i32.const 2)) (i32.const 105))
    (call $check (call $close (local.get $conn)) (i32.const 106))
    (call $exit (i32.load (i32.const 8)))))`

// A server written as Rust std writes one, unmodified, blocking in accept
// and in read, serves a connection: its calls wait in the host for the
// peer. (The Go server, which reads the listener's flags first, finds it
// non-blocking: TestGoServerServesOnItsListener.)
func TestBlockingServer(t *testing.T) {
	r := newRuntime(t)
	l, port := listen(t)
	inst, out := run(t, r, testmodule.Wat(t, blockingEcho), Spec{Listeners: []Listener{l}})
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	// The module is blocked in its read until this arrives.
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(conn)
	if err != nil || string(back) != "hello" {
		t.Fatalf("echoed %q, %v", back, err)
	}
	if res := wait(t, inst, 20*time.Second); res.ExitCode != 5 {
		t.Fatalf("%+v %s", res, out.stderr.String())
	}
}

// acceptAll accepts until sock_accept fails (blocking: the listener's
// flags never read), holding every connection, and exits with the errno.
const acceptAll = `(module
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $errno i32)
    (loop $again
      (local.set $errno (call $accept (i32.const 3) (i32.const 0) (i32.const 0)))
      (br_if $again (i32.eqz (local.get $errno))))
    (call $exit (local.get $errno))))`

// A module that accepts every connection and closes none holds at most
// maxConnections of the daemon's fds: the next accept fails with EMFILE,
// and the connection waits in the backlog.
func TestAcceptedConnectionsAreBounded(t *testing.T) {
	r := newRuntime(t)
	l, port := listen(t)
	inst, _ := run(t, r, testmodule.Wat(t, acceptAll), Spec{Listeners: []Listener{l}})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for k := 0; k <= maxConnections; k++ {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("connection %d: %v", k, err)
		}
		conns = append(conns, c)
	}
	if res := wait(t, inst, 30*time.Second); res.ExitCode != errnoMfile {
		t.Fatalf("%+v, want exit %d (EMFILE)", res, errnoMfile)
	}
}
