package wasm

import (
	"encoding/binary"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"
)

// WASI preview1 layout of poll_oneoff's subscriptions and events.
const (
	subscriptionSize = 48
	eventSize        = 32

	eventTypeClock   = 0
	eventTypeFdRead  = 1
	eventTypeFdWrite = 2

	clockRealtime        = 0
	subscriptionAbstime  = 1
	errnoSuccess         = 0
	errnoFault           = 21
	errnoInval           = 28
	maxPollSubscriptions = 4096
)

// definePollOneoff replaces wasmtime's poll_oneoff with one that waits in Go,
// so Stop can end an instance that sleeps: epoch interruption only reaches
// running wasm code, never a thread blocked inside a host call.
//
// Clock subscriptions wait for the earliest deadline; sockets (sockets.go)
// until they are ready. Other file descriptors are reported ready at once:
// WASI files and our output pipes never block a reader or writer for
// long, as on POSIX for regular files.
//
// The linker is shared by all instances, running at once on their own
// threads: the calling instance is the store's data.
func definePollOneoff(linker *wasmtime.Linker) error {
	linker.AllowShadowing(true)
	return linker.FuncWrap("wasi_snapshot_preview1", "poll_oneoff",
		func(caller *wasmtime.Caller, in, out, nsubs, neventsPtr int32) (int32, *wasmtime.Trap) {
			inst := caller.Data().(*Instance)
			stop, origin := inst.stop, inst.origin
			inst.onHostCall(caller)
			mem := caller.GetExport("memory")
			if mem == nil || mem.Memory() == nil {
				return errnoFault, nil
			}
			data := mem.Memory().UnsafeData(caller)
			if nsubs <= 0 || nsubs > maxPollSubscriptions {
				return errnoInval, nil
			}
			subs, ok := slice(data, in, nsubs*subscriptionSize)
			if !ok {
				return errnoFault, nil
			}
			if _, ok := slice(data, out, nsubs*eventSize); !ok {
				return errnoFault, nil
			}
			if _, ok := slice(data, neventsPtr, 4); !ok {
				return errnoFault, nil
			}

			// Read the subscriptions out before waiting; guest memory is
			// looked up again afterwards.
			list := make([]pollSub, nsubs)
			var w pollWait
			w.soonest = -1
			now := time.Now()
			for k := range list {
				s := subs[k*subscriptionSize : (k+1)*subscriptionSize]
				list[k] = pollSub{userdata: binary.LittleEndian.Uint64(s[0:]), tag: s[8], sock: -1}
				switch s[8] {
				case eventTypeClock:
					clockID := binary.LittleEndian.Uint32(s[16:])
					timeout := binary.LittleEndian.Uint64(s[24:])
					flags := binary.LittleEndian.Uint16(s[40:])
					d := time.Duration(min(timeout, uint64(1<<63-1)))
					if flags&subscriptionAbstime != 0 {
						d = absoluteWait(clockID, timeout, now, origin)
					}
					list[k].wait = max(d, 0)
					if w.soonest < 0 || list[k].wait < w.soonest {
						w.soonest = list[k].wait
					}
				case eventTypeFdRead, eventTypeFdWrite:
					w.addFD(inst.socks, &list[k], int32(binary.LittleEndian.Uint32(s[16:])))
				default:
					return errnoInval, nil
				}
			}

			if trap := inst.pollWait(&w, stop); trap != nil {
				return 0, trap
			}

			// Memory may have been replaced while we waited; look again.
			data = mem.Memory().UnsafeData(caller)
			elapsed := time.Since(now)
			anyReady := w.fdReady || w.socketReady()
			n := 0
			for _, s := range list {
				var errno uint16
				var flags uint16
				switch {
				case s.tag == eventTypeClock:
					if (anyReady || s.wait > elapsed) && s.wait != 0 {
						continue
					}
				case s.sock >= 0:
					rev := w.fds[s.sock].Revents
					if rev == 0 {
						continue
					}
					if rev&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
						flags = eventHangup
					}
				case s.badSocket:
					errno = errnoBadf
				}
				e := data[int(out)+n*eventSize : int(out)+(n+1)*eventSize]
				clear(e)
				binary.LittleEndian.PutUint64(e[0:], s.userdata)
				binary.LittleEndian.PutUint16(e[8:], errno)
				e[10] = s.tag
				binary.LittleEndian.PutUint16(e[24:], flags)
				n++
			}
			binary.LittleEndian.PutUint32(data[neventsPtr:], uint32(n))
			return errnoSuccess, nil
		})
}

// pollSub is one subscription, read out of guest memory.
type pollSub struct {
	userdata uint64
	tag      byte
	wait     time.Duration
	// sock is the subscription's index in pollWait.fds, -1 for none;
	// badSocket marks an fd in the socket range that is not open.
	sock      int
	badSocket bool
}

// pollWait is what one poll_oneoff waits for.
type pollWait struct {
	// soonest is the earliest clock deadline, -1 for none.
	soonest time.Duration
	// fdReady is set by an fd that is ready at once: WASI files and our
	// output pipes never block a reader or writer for long, as on POSIX
	// for regular files; a closed socket fd is ready with EBADF.
	fdReady bool
	// fds are the sockets to wait for, then the instance's wake fd.
	fds []unix.PollFd
}

func (w *pollWait) addFD(t *socketTable, s *pollSub, fd int32) {
	if t == nil || !t.isSocketFD(fd) {
		w.fdReady = true
		return
	}
	sock := t.socks[fd]
	if sock == nil {
		s.badSocket = true
		w.fdReady = true
		return
	}
	events := int16(unix.POLLIN)
	if s.tag == eventTypeFdWrite {
		events = unix.POLLOUT
	}
	s.sock = len(w.fds)
	w.fds = append(w.fds, unix.PollFd{Fd: int32(sock.host), Events: events})
}

func (w *pollWait) socketReady() bool {
	for _, f := range w.fds {
		if f.Revents != 0 {
			return true
		}
	}
	return false
}

// pollWait blocks for the earliest deadline, or, with sockets, until one
// is ready, in ppoll with the wake fd among them so Stop ends the wait.
// Without sockets it waits on a timer, which Stop's channel cuts short.
func (i *Instance) pollWait(w *pollWait, stop <-chan struct{}) *wasmtime.Trap {
	if len(w.fds) == 0 {
		if !w.fdReady && w.soonest > 0 {
			t := time.NewTimer(w.soonest)
			i.asleep.begin()
			select {
			case <-t.C:
				i.asleep.end()
			case <-stop:
				i.asleep.end()
				t.Stop()
				return wasmtime.NewTrap("stopped")
			}
		}
	} else {
		w.fds = append(w.fds, unix.PollFd{Fd: int32(i.socks.wake), Events: unix.POLLIN})
		wait := w.soonest
		if w.fdReady {
			wait = 0
		}
		deadline := time.Now().Add(wait)
		i.asleep.begin()
		for {
			var ts *unix.Timespec
			if wait >= 0 {
				t := unix.NsecToTimespec(int64(max(time.Until(deadline), 0)))
				ts = &t
			}
			if _, err := unix.Ppoll(w.fds, ts, nil); err != unix.EINTR {
				break
			}
		}
		i.asleep.end()
		wake := w.fds[len(w.fds)-1]
		w.fds = w.fds[:len(w.fds)-1]
		if wake.Revents != 0 {
			return wasmtime.NewTrap("stopped")
		}
	}
	select {
	case <-stop:
		return wasmtime.NewTrap("stopped")
	default:
	}
	return nil
}

// absoluteWait converts an absolute clock deadline to a wait from now.
func absoluteWait(clockID uint32, deadline uint64, now, origin time.Time) time.Duration {
	d := int64(min(deadline, uint64(1<<63-1)))
	if clockID == clockRealtime {
		return time.Unix(0, d).Sub(now)
	}
	return time.Duration(d) - now.Sub(origin)
}

// slice returns guest memory [off, off+n) if it is in bounds.
func slice(data []byte, off, n int32) ([]byte, bool) {
	if off < 0 || n < 0 || int64(off)+int64(n) > int64(len(data)) {
		return nil, false
	}
	return data[off : off+n], true
}
