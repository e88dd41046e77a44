package sandbox

import (
	"io"
	"sync"
)

// outputHub fans one output stream of a running container out to the
// clients attached to it. A client that cannot keep up loses output; it
// never slows the container or its log.
type outputHub struct {
	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	closed bool
}

type subscriber struct {
	ch   chan []byte
	done chan struct{}
}

const attachQueue = 256 // chunks a slow client may lag behind

func newOutputHub() *outputHub { return &outputHub{subs: map[*subscriber]struct{}{}} }

func (h *outputHub) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		return len(p), nil
	}
	chunk := append([]byte(nil), p...)
	for s := range h.subs {
		select {
		case s.ch <- chunk:
		default:
		}
	}
	return len(p), nil
}

// Close ends every attached client's stream: the container's output ended.
func (h *outputHub) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for s := range h.subs {
		close(s.ch)
		delete(h.subs, s)
	}
	return nil
}

// attach copies the stream to w until the stream ends or detach is
// called; done is closed when copying has stopped.
func (h *outputHub) attach(w io.Writer) (detach func(), done <-chan struct{}) {
	s := &subscriber{ch: make(chan []byte, attachQueue), done: make(chan struct{})}
	h.mu.Lock()
	if h.closed {
		close(s.ch)
	} else {
		h.subs[s] = struct{}{}
	}
	h.mu.Unlock()
	go func() {
		defer close(s.done)
		for chunk := range s.ch {
			if _, err := w.Write(chunk); err != nil {
				break
			}
		}
	}()
	detach = func() {
		h.mu.Lock()
		if _, ok := h.subs[s]; ok {
			delete(h.subs, s)
			close(s.ch)
		}
		h.mu.Unlock()
	}
	return detach, s.done
}

// tee writes a stream to its log and to its attach hub.
type tee struct {
	log io.WriteCloser // nil when the container keeps no log
	hub *outputHub
}

func (t tee) Write(p []byte) (int, error) {
	if t.log != nil {
		t.log.Write(p)
	}
	return t.hub.Write(p)
}

func (t tee) Close() error {
	if t.log != nil {
		t.log.Close()
	}
	return t.hub.Close()
}

// stdinHub is a container's standard input when its config asks for one:
// attached clients write into it. With once set, the first client's end
// of input is the module's end of input.
//
// One pump per container writes what clients send into the module's
// input; a client's feed hands chunks to the pump and can always give up
// when its session ends, so a module that never reads its input holds no
// goroutine of a client that has gone.
type stdinHub struct {
	r      *io.PipeReader
	w      *io.PipeWriter
	once   bool
	chunks chan []byte
	eof    sync.Once // once: the first client's end of input
	done   chan struct{}
	closed sync.Once
}

func newStdinHub(once bool) *stdinHub {
	r, w := io.Pipe()
	h := &stdinHub{r: r, w: w, once: once, chunks: make(chan []byte), done: make(chan struct{})}
	go h.pump()
	return h
}

// pump writes chunks into the module's input until the hub closes; a nil
// chunk is the end of input.
func (h *stdinHub) pump() {
	defer h.w.Close()
	for {
		select {
		case b := <-h.chunks:
			if b == nil {
				return
			}
			if _, err := h.w.Write(b); err != nil {
				return
			}
		case <-h.done:
			return
		}
	}
}

// feed passes in to the module's input until in ends or session closes.
func (h *stdinHub) feed(in io.Reader, session <-chan struct{}) {
	send := func(b []byte) bool {
		select {
		case h.chunks <- b:
			return true
		case <-session:
		case <-h.done:
		}
		return false
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := in.Read(buf)
		if n > 0 && !send(append([]byte(nil), buf[:n]...)) {
			return
		}
		if err != nil {
			if h.once {
				h.eof.Do(func() { send(nil) })
			}
			return
		}
	}
}

// close ends the module's input (the container has ended).
func (h *stdinHub) close() {
	if h == nil {
		return
	}
	h.closed.Do(func() {
		close(h.done)
		// A pump blocked writing to a module that never read gives up.
		h.r.Close()
	})
}
