package wasm

import (
	"encoding/binary"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
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
// Clock subscriptions wait for the earliest deadline. File descriptors are
// reported ready at once: WASI files and our output pipes never block a
// reader or writer for long, as on POSIX for regular files.
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
			type sub struct {
				userdata uint64
				tag      byte
				wait     time.Duration
			}
			list := make([]sub, nsubs)
			fdReady := false
			var soonest time.Duration = -1
			now := time.Now()
			for i := range list {
				s := subs[i*subscriptionSize : (i+1)*subscriptionSize]
				list[i] = sub{userdata: binary.LittleEndian.Uint64(s[0:]), tag: s[8]}
				switch s[8] {
				case eventTypeClock:
					clockID := binary.LittleEndian.Uint32(s[16:])
					timeout := binary.LittleEndian.Uint64(s[24:])
					flags := binary.LittleEndian.Uint16(s[40:])
					d := time.Duration(min(timeout, uint64(1<<63-1)))
					if flags&subscriptionAbstime != 0 {
						d = absoluteWait(clockID, timeout, now, origin)
					}
					list[i].wait = max(d, 0)
					if soonest < 0 || list[i].wait < soonest {
						soonest = list[i].wait
					}
				case eventTypeFdRead, eventTypeFdWrite:
					fdReady = true
				default:
					return errnoInval, nil
				}
			}

			if !fdReady && soonest > 0 {
				t := time.NewTimer(soonest)
				inst.asleep.begin()
				select {
				case <-t.C:
					inst.asleep.end()
				case <-stop:
					inst.asleep.end()
					t.Stop()
					return 0, wasmtime.NewTrap("stopped")
				}
			}
			select {
			case <-stop:
				return 0, wasmtime.NewTrap("stopped")
			default:
			}

			// Memory may have been replaced while we waited; look again.
			data = mem.Memory().UnsafeData(caller)
			elapsed := time.Since(now)
			n := 0
			for _, s := range list {
				fired := s.tag != eventTypeClock || (!fdReady && s.wait <= elapsed) || s.wait == 0
				if !fired {
					continue
				}
				e := data[int(out)+n*eventSize : int(out)+(n+1)*eventSize]
				clear(e)
				binary.LittleEndian.PutUint64(e[0:], s.userdata)
				binary.LittleEndian.PutUint16(e[8:], errnoSuccess)
				e[10] = s.tag
				n++
			}
			binary.LittleEndian.PutUint32(data[neventsPtr:], uint32(n))
			return errnoSuccess, nil
		})
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
