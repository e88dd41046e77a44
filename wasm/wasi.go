package wasm

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// newWasiConfig sets argv, env, preopened directories and standard I/O.
func newWasiConfig(spec Spec) (*wasmtime.WasiConfig, *stdio, error) {
	wasi := wasmtime.NewWasiConfig()
	wasi.SetArgv(spec.Args)
	keys, values := splitEnv(withWorkingDir(spec.Env, spec.WorkingDir))
	wasi.SetEnv(keys, values)
	for _, d := range spec.Dirs {
		dirPerms, filePerms := wasmtime.DIR_READ|wasmtime.DIR_WRITE, wasmtime.FILE_READ|wasmtime.FILE_WRITE
		if d.ReadOnly {
			dirPerms, filePerms = wasmtime.DIR_READ, wasmtime.FILE_READ
		}
		if err := wasi.PreopenDir(d.Host, d.Guest, dirPerms, filePerms); err != nil {
			wasi.Close()
			return nil, nil, fmt.Errorf("preopen %s at %s: %w", d.Host, d.Guest, err)
		}
	}
	sio, err := openStdio(wasi, spec)
	if err != nil {
		wasi.Close()
		return nil, nil, err
	}
	return wasi, sio, nil
}

// withWorkingDir passes the working directory the way WASI programs read
// it: preview1 has no cwd, so Go and wasi-libc start from $PWD.
func withWorkingDir(env []string, dir string) []string {
	if dir == "" {
		return env
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "PWD=") {
			return env
		}
	}
	return append(env[:len(env):len(env)], "PWD="+dir)
}

func splitEnv(env []string) (keys, values []string) {
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		keys = append(keys, k)
		values = append(values, v)
	}
	return keys, values
}

// stdio is our side of an instance's standard I/O pipes.
type stdio struct {
	stdin   *stdinPipe
	readers []*os.File
	writers []io.WriteCloser
}

// openStdio connects the module's standard I/O to anonymous pipes. WASI
// takes only file paths, so wasmtime opens our end's /proc/self/fd path,
// which reaches the same pipe; we then close our copy of that end, so the
// stream ends when wasmtime's does. No file is made for it.
func openStdio(wasi *wasmtime.WasiConfig, spec Spec) (*stdio, error) {
	s := &stdio{}
	if spec.Stdin != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stdin pipe: %w", err)
		}
		err = wasi.SetStdinFile(procPath(r))
		r.Close()
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("attach stdin: %w", err)
		}
		s.stdin = &stdinPipe{w: w, src: spec.Stdin}
	}
	for _, o := range []struct {
		name string
		w    io.WriteCloser
		set  func(string) error
	}{{"stdout", spec.Stdout, wasi.SetStdoutFile}, {"stderr", spec.Stderr, wasi.SetStderrFile}} {
		if o.w == nil {
			continue
		}
		r, w, err := os.Pipe()
		if err != nil {
			s.abandon()
			return nil, fmt.Errorf("%s pipe: %w", o.name, err)
		}
		err = o.set(procPath(w))
		w.Close()
		s.readers = append(s.readers, r)
		s.writers = append(s.writers, o.w)
		if err != nil {
			s.abandon()
			return nil, fmt.Errorf("attach %s: %w", o.name, err)
		}
	}
	return s, nil
}

func procPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// start copies stdin in and each output stream out until EOF; the
// returned group ends when the outputs are fully written.
func (s *stdio) start() *sync.WaitGroup {
	if s.stdin != nil {
		go s.stdin.feed()
	}
	var wg sync.WaitGroup
	for i, r := range s.readers {
		wg.Add(1)
		go func(r *os.File, w io.WriteCloser) {
			defer wg.Done()
			io.Copy(w, r)
			r.Close()
			w.Close()
		}(r, s.writers[i])
	}
	return &wg
}

func (s *stdio) abandon() {
	s.stdin.close()
	for _, r := range s.readers {
		r.Close()
	}
	for _, w := range s.writers {
		w.Close()
	}
}

// stdinPipe feeds a reader into the module's stdin pipe.
type stdinPipe struct {
	w    *os.File
	src  io.Reader
	once sync.Once
}

func (p *stdinPipe) feed() {
	io.Copy(p.w, p.src)
	p.close()
}

// close ends the module's stdin: once our end closes, its reads see EOF.
func (p *stdinPipe) close() {
	if p == nil {
		return
	}
	p.once.Do(func() { p.w.Close() })
}
