package wasm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"
)

// Listener is a listening TCP socket handed to an instance at fd 3 and
// up, in order, as LISTEN_FDS/LISTEN_FDNAMES announce (the convention of
// systemd and of wasmtime's --tcplisten): Go programs take it with
// net.FileListener(os.NewFile(3, "")), Rust ones with
// TcpListener::from_raw_fd(3).
type Listener struct {
	// FD is the daemon's socket, non-blocking, already listening. Start
	// takes it over: the instance closes it when it ends, or Start does
	// when it fails.
	FD   int
	Name string
}

// Limits on what a module can make the daemon hold.
const (
	// MaxListeners bounds a Spec's listeners.
	MaxListeners = 64
	// maxConnections bounds an instance's open accepted connections, each
	// a daemon fd: beyond it sock_accept answers EMFILE and the connection
	// waits in the backlog.
	maxConnections = 1024
	// maxIovecs bounds one read's or write's buffers, as IOV_MAX does.
	maxIovecs = 1024
)

// WASI values a socket fd is described with.
const (
	filetypeSocketStream = 6
	fdflagNonblock       = 4
	// prestatNotDir is what fd_prestat_get says of a socket: success, so
	// Go and wasi-libc keep scanning for preopened directories past the
	// listeners, and a tag that is not a directory, so they skip it.
	prestatNotDir = 1

	rightFdRead          = 1 << 1
	rightFdSetFlags      = 1 << 3
	rightFdWrite         = 1 << 6
	rightFdFilestatGet   = 1 << 21
	rightPollFdReadWrite = 1 << 27
	rightSockShutdown    = 1 << 28
	rightSockAccept      = 1 << 29

	recvPeek    = 1
	recvWaitall = 2
	shutRd      = 1
	shutWr      = 2

	eventHangup = 1
)

// socket is one socket fd of an instance.
type socket struct {
	host     int // the daemon's fd: always non-blocking
	listener bool
	// nonblock is the guest's view: blocking calls wait in Go for
	// readiness (or Stop) rather than in the kernel.
	nonblock bool
	// undecided marks a listener whose mode the module has neither read
	// nor set (see newSocketTable).
	undecided bool
}

// flags is what fd_fdstat_get says of s. A listener whose mode is still
// undecided becomes non-blocking the moment it is asked, so what the
// module reads is what holds from then on.
func (s *socket) flags() uint16 {
	if s.undecided {
		s.nonblock, s.undecided = true, false
	}
	if s.nonblock {
		return fdflagNonblock
	}
	return 0
}

// socketTable holds an instance's sockets. Only the instance's own thread
// touches it, from its host calls, except wake, which Stop writes under
// the instance's mu (closed is set under that mu too).
type socketTable struct {
	listeners int
	socks     map[int32]*socket
	next      int32
	conns     int
	// wake is an eventfd that becomes readable when the instance is
	// stopped: every wait for a socket also waits for it.
	wake   int
	closed bool
	// memory is the guest's "memory" export, the one WASI works on: the
	// socket functions called from the dispatch module have no caller
	// memory of their own.
	memory *wasmtime.Memory
}

func newSocketTable(ls []Listener) (*socketTable, error) {
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, err
	}
	t := &socketTable{listeners: len(ls), socks: map[int32]*socket{}, next: firstConnFD, wake: wake}
	for k, l := range ls {
		// Go and Rust need opposite modes, and tell which by what they
		// call first. Go's os.NewFile reads the flags and keeps a blocking
		// fd out of its poller (its Accept would then block the whole
		// single-threaded Go runtime): it must read non-blocking. Rust
		// std's TcpListener::from_raw_fd reads nothing and its accept
		// expects to block, as on a socket inherited on POSIX. So a
		// listener blocks until the module reads its flags, and reads
		// non-blocking (wasmtime's --tcplisten mode) from then on.
		t.socks[int32(3+k)] = &socket{host: l.FD, listener: true, undecided: true}
	}
	return t, nil
}

// isSocketFD says whether fd is in the socket range, open or not.
func (t *socketTable) isSocketFD(fd int32) bool {
	return uint32(fd) >= firstConnFD || (fd >= 3 && int(fd) < 3+t.listeners)
}

// wakeUp makes every wait return; under the instance's mu.
func (t *socketTable) wakeUp() {
	if t == nil || t.closed {
		return
	}
	var one [8]byte
	one[0] = 1
	unix.Write(t.wake, one[:])
}

// close closes every socket and the wake fd; under the instance's mu.
func (t *socketTable) close() {
	if t == nil || t.closed {
		return
	}
	t.closed = true
	for fd, s := range t.socks {
		unix.Close(s.host)
		delete(t.socks, fd)
	}
	unix.Close(t.wake)
}

// closeListeners closes listeners Start was given but did not take over.
func closeListeners(ls []Listener) {
	for _, l := range ls {
		unix.Close(l.FD)
	}
}

// add numbers a new connection.
func (t *socketTable) add(s *socket) int32 {
	for t.socks[t.next] != nil {
		t.next++
		if t.next < firstConnFD {
			t.next = firstConnFD
		}
	}
	fd := t.next
	t.socks[fd] = s
	t.next++
	if t.next < firstConnFD {
		t.next = firstConnFD
	}
	t.conns++
	return fd
}

// waitSocket blocks until host is ready for events, or the instance is stopped.
func (i *Instance) waitSocket(host int, events int16) *wasmtime.Trap {
	fds := []unix.PollFd{{Fd: int32(host), Events: events}, {Fd: int32(i.socks.wake), Events: unix.POLLIN}}
	i.asleep.begin()
	for {
		_, err := unix.Ppoll(fds, nil, nil)
		if err != unix.EINTR {
			break
		}
	}
	i.asleep.end()
	if fds[1].Revents != 0 {
		return wasmtime.NewTrap("stopped")
	}
	return nil
}

// hostErrno maps a host error to its WASI errno.
func hostErrno(err error) int32 {
	var e unix.Errno
	if !errors.As(err, &e) {
		return errnoIO
	}
	switch e {
	case unix.EAGAIN:
		return errnoAgain
	case unix.EBADF:
		return errnoBadf
	case unix.ECONNABORTED:
		return 13
	case unix.ECONNREFUSED:
		return 14
	case unix.ECONNRESET:
		return errnoConnrset
	case unix.EINTR:
		return 27
	case unix.EINVAL:
		return errnoInval
	case unix.EMFILE:
		return errnoMfile
	case unix.ENETDOWN:
		return 38
	case unix.ENETUNREACH:
		return 40
	case unix.ENFILE:
		return 41
	case unix.ENOBUFS:
		return 42
	case unix.ENOMEM:
		return 48
	case unix.ENOTCONN:
		return 53
	case unix.ENOTSOCK:
		return errnoNotsock
	case unix.EOPNOTSUPP:
		return errnoNotsup
	case unix.EPIPE:
		return 64
	case unix.ETIMEDOUT:
		return 73
	case unix.EHOSTUNREACH:
		return 23
	}
	return errnoIO
}

// guestBytes is guest memory [off, off+n) for unsigned wasm32 offsets.
func guestBytes(data []byte, off, n uint32) ([]byte, bool) {
	if uint64(off)+uint64(n) > uint64(len(data)) {
		return nil, false
	}
	return data[off : off+n], true
}

// iovecs reads n (buf, len) pairs at iovs into slices of guest memory.
func iovecs(data []byte, iovs, n int32) ([][]byte, int32) {
	if n < 0 || n > maxIovecs {
		return nil, errnoInval
	}
	raw, ok := guestBytes(data, uint32(iovs), uint32(n)*8)
	if !ok {
		return nil, errnoFault
	}
	bufs := make([][]byte, 0, n)
	for k := int32(0); k < n; k++ {
		b, ok := guestBytes(data, binary.LittleEndian.Uint32(raw[8*k:]), binary.LittleEndian.Uint32(raw[8*k+4:]))
		if !ok {
			return nil, errnoFault
		}
		if len(b) > 0 {
			bufs = append(bufs, b)
		}
	}
	return bufs, errnoSuccess
}

// putU32 stores v at off in guest memory.
func putU32(data []byte, off int32, v uint32) bool {
	b, ok := guestBytes(data, uint32(off), 4)
	if ok {
		binary.LittleEndian.PutUint32(b, v)
	}
	return ok
}

// sockCall is what every socket function starts with: the calling
// instance, its socket fd (nil if fd is not one) and guest memory.
func sockCall(caller *wasmtime.Caller, fd int32) (*Instance, *socket, []byte) {
	i := caller.Data().(*Instance)
	t := i.socks
	if t == nil || t.memory == nil {
		return i, nil, nil
	}
	return i, t.socks[fd], t.memory.UnsafeData(caller)
}

// transfer runs a read or write of a socket until it moves data, fails, or
// (on a non-blocking fd) would block.
func (i *Instance) transfer(s *socket, events int16, op func() (int, error)) (int, int32, *wasmtime.Trap) {
	for {
		n, err := op()
		if err == nil {
			return n, errnoSuccess, nil
		}
		if err == unix.EINTR {
			continue
		}
		if err != unix.EAGAIN || s.nonblock {
			return 0, hostErrno(err), nil
		}
		if trap := i.waitSocket(s.host, events); trap != nil {
			return 0, 0, trap
		}
	}
}

// defineSocketFuncs defines, under socketModule, the socket side of the
// dispatched fd calls and the sock_* calls.
func defineSocketFuncs(l *wasmtime.Linker) error {
	funcs := map[string]any{
		"fd_read": func(caller *wasmtime.Caller, fd, iovs, n, nread int32) (int32, *wasmtime.Trap) {
			i, s, data := sockCall(caller, fd)
			if s == nil {
				return errnoBadf, nil
			}
			bufs, errno := iovecs(data, iovs, n)
			if errno != errnoSuccess {
				return errno, nil
			}
			if _, ok := guestBytes(data, uint32(nread), 4); !ok {
				return errnoFault, nil
			}
			got, errno, trap := i.transfer(s, unix.POLLIN, func() (int, error) {
				n, _, _, _, err := unix.RecvmsgBuffers(s.host, bufs, nil, 0)
				return n, err
			})
			if trap != nil || errno != errnoSuccess {
				return errno, trap
			}
			putU32(data, nread, uint32(got))
			return errnoSuccess, nil
		},
		"fd_write": func(caller *wasmtime.Caller, fd, iovs, n, nwritten int32) (int32, *wasmtime.Trap) {
			return sockSend(caller, fd, iovs, n, 0, nwritten)
		},
		"fd_close": func(caller *wasmtime.Caller, fd int32) int32 {
			i, s, _ := sockCall(caller, fd)
			if s == nil {
				return errnoBadf
			}
			delete(i.socks.socks, fd)
			if !s.listener {
				i.socks.conns--
			}
			unix.Close(s.host)
			return errnoSuccess
		},
		"fd_fdstat_get": func(caller *wasmtime.Caller, fd, buf int32) int32 {
			_, s, data := sockCall(caller, fd)
			if s == nil {
				return errnoBadf
			}
			b, ok := guestBytes(data, uint32(buf), 24)
			if !ok {
				return errnoFault
			}
			clear(b)
			b[0] = filetypeSocketStream
			binary.LittleEndian.PutUint16(b[2:], s.flags())
			rights := uint64(rightFdRead | rightFdSetFlags | rightFdWrite | rightFdFilestatGet | rightPollFdReadWrite | rightSockShutdown)
			if s.listener {
				rights |= rightSockAccept
			}
			binary.LittleEndian.PutUint64(b[8:], rights)
			return errnoSuccess
		},
		"fd_fdstat_set_flags": func(caller *wasmtime.Caller, fd, flags int32) int32 {
			_, s, _ := sockCall(caller, fd)
			if s == nil {
				return errnoBadf
			}
			if flags&^fdflagNonblock != 0 {
				return errnoNotsup
			}
			s.nonblock, s.undecided = flags&fdflagNonblock != 0, false
			return errnoSuccess
		},
		"fd_filestat_get": func(caller *wasmtime.Caller, fd, buf int32) int32 {
			_, s, data := sockCall(caller, fd)
			if s == nil {
				return errnoBadf
			}
			b, ok := guestBytes(data, uint32(buf), 64)
			if !ok {
				return errnoFault
			}
			clear(b)
			b[16] = filetypeSocketStream
			binary.LittleEndian.PutUint64(b[24:], 1) // nlink
			return errnoSuccess
		},
		"fd_prestat_get": func(caller *wasmtime.Caller, fd, buf int32) int32 {
			_, s, data := sockCall(caller, fd)
			if s == nil {
				return errnoBadf
			}
			b, ok := guestBytes(data, uint32(buf), 8)
			if !ok {
				return errnoFault
			}
			clear(b)
			b[0] = prestatNotDir
			return errnoSuccess
		},
		"sock_accept": func(caller *wasmtime.Caller, fd, flags, newFD int32) (int32, *wasmtime.Trap) {
			i, s, data := sockCall(caller, fd)
			switch {
			case s == nil:
				return errnoNotsock, nil
			case !s.listener:
				return errnoInval, nil
			case flags&^fdflagNonblock != 0:
				return errnoInval, nil
			}
			if _, ok := guestBytes(data, uint32(newFD), 4); !ok {
				return errnoFault, nil
			}
			if i.socks.conns >= maxConnections {
				return errnoMfile, nil
			}
			host, errno, trap := i.transfer(s, unix.POLLIN, func() (int, error) {
				nfd, _, err := unix.Accept4(s.host, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
				return nfd, err
			})
			if trap != nil || errno != errnoSuccess {
				return errno, trap
			}
			n := i.socks.add(&socket{host: host, nonblock: flags&fdflagNonblock != 0})
			putU32(data, newFD, uint32(n))
			return errnoSuccess, nil
		},
		"sock_recv": func(caller *wasmtime.Caller, fd, iovs, n, flags, nread, outFlags int32) (int32, *wasmtime.Trap) {
			i, s, data := sockCall(caller, fd)
			if s == nil {
				return errnoNotsock, nil
			}
			if flags&^(recvPeek|recvWaitall) != 0 {
				return errnoInval, nil
			}
			bufs, errno := iovecs(data, iovs, n)
			if errno != errnoSuccess {
				return errno, nil
			}
			if _, ok := guestBytes(data, uint32(nread), 4); !ok {
				return errnoFault, nil
			}
			if _, ok := guestBytes(data, uint32(outFlags), 2); !ok {
				return errnoFault, nil
			}
			hostFlags := 0
			if flags&recvPeek != 0 {
				hostFlags |= unix.MSG_PEEK
			}
			if flags&recvWaitall != 0 {
				hostFlags |= unix.MSG_WAITALL
			}
			got, errno, trap := i.transfer(s, unix.POLLIN, func() (int, error) {
				n, _, _, _, err := unix.RecvmsgBuffers(s.host, bufs, nil, hostFlags)
				return n, err
			})
			if trap != nil || errno != errnoSuccess {
				return errno, trap
			}
			putU32(data, nread, uint32(got))
			of, _ := guestBytes(data, uint32(outFlags), 2)
			clear(of) // no RECV_DATA_TRUNCATED: a stream is never truncated
			return errnoSuccess, nil
		},
		"sock_send": func(caller *wasmtime.Caller, fd, iovs, n, flags, nwritten int32) (int32, *wasmtime.Trap) {
			if flags != 0 {
				return errnoInval, nil
			}
			return sockSend(caller, fd, iovs, n, errnoNotsock, nwritten)
		},
		"sock_shutdown": func(caller *wasmtime.Caller, fd, how int32) int32 {
			_, s, _ := sockCall(caller, fd)
			if s == nil {
				return errnoNotsock
			}
			var h int
			switch how {
			case shutRd:
				h = unix.SHUT_RD
			case shutWr:
				h = unix.SHUT_WR
			case shutRd | shutWr:
				h = unix.SHUT_RDWR
			default:
				return errnoInval
			}
			if err := unix.Shutdown(s.host, h); err != nil {
				return hostErrno(err)
			}
			return errnoSuccess
		},
	}
	for _, f := range wasiFuncs {
		if f.onSocket != goSocket {
			continue
		}
		if err := l.FuncWrap(socketModule, f.name, funcs[f.name]); err != nil {
			return err
		}
	}
	return nil
}

// sockSend writes a socket: fd_write and sock_send. notSocket is the
// errno of an fd that is no socket (0: EBADF).
func sockSend(caller *wasmtime.Caller, fd, iovs, n, notSocket, nwritten int32) (int32, *wasmtime.Trap) {
	i, s, data := sockCall(caller, fd)
	if s == nil {
		if notSocket == 0 {
			return errnoBadf, nil
		}
		return notSocket, nil
	}
	bufs, errno := iovecs(data, iovs, n)
	if errno != errnoSuccess {
		return errno, nil
	}
	if _, ok := guestBytes(data, uint32(nwritten), 4); !ok {
		return errnoFault, nil
	}
	// MSG_NOSIGNAL: a peer gone is EPIPE for the module, not a SIGPIPE for
	// the daemon.
	sent, errno, trap := i.transfer(s, unix.POLLOUT, func() (int, error) {
		return unix.SendmsgBuffers(s.host, bufs, nil, nil, unix.MSG_NOSIGNAL)
	})
	if trap != nil || errno != errnoSuccess {
		return errno, trap
	}
	putU32(data, nwritten, uint32(sent))
	return errnoSuccess, nil
}

// listenSpec prepares spec for its listeners: LISTEN_FDS and
// LISTEN_FDNAMES in its environment (replacing any it set), and as many
// placeholder preopens ahead of its directories, so wasmtime numbers its
// real preopens after the listeners' fds. The placeholders are never seen:
// every call on those fds is dispatched to the sockets.
func (r *Runtime) listenSpec(spec *Spec) (*socketHelpers, error) {
	if len(spec.Listeners) > MaxListeners {
		return nil, fmt.Errorf("%d listeners: at most %d", len(spec.Listeners), MaxListeners)
	}
	names := make([]string, len(spec.Listeners))
	for k, l := range spec.Listeners {
		if l.Name == "" || strings.ContainsAny(l.Name, ":\x00") {
			return nil, fmt.Errorf("listener name %q: must be non-empty, without ':'", l.Name)
		}
		names[k] = l.Name
	}
	helpers, err := r.socketHelpers()
	if err != nil {
		return nil, err
	}
	env := make([]string, 0, len(spec.Env)+2)
	for _, kv := range spec.Env {
		k, _, _ := strings.Cut(kv, "=")
		if k != "LISTEN_FDS" && k != "LISTEN_FDNAMES" && k != "LISTEN_PID" {
			env = append(env, kv)
		}
	}
	spec.Env = append(env, "LISTEN_FDS="+strconv.Itoa(len(names)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	dirs := make([]Dir, 0, len(names)+len(spec.Dirs))
	for k := range names {
		dirs = append(dirs, Dir{Host: helpers.placeholder, Guest: "/.wasmcri-listener-" + strconv.Itoa(k), ReadOnly: true})
	}
	spec.Dirs = append(dirs, spec.Dirs...)
	return helpers, nil
}
