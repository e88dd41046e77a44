// Package crilog writes and reads container logs in kubelet's CRI log
// format: one file per container, both output streams in it, a record per
// line
//
//	<RFC3339Nano time> <stdout|stderr> <F|P> <text>
//
// where F ends a line and P is a piece of a longer one that the stream's
// next records carry on.
package crilog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// MaxLine is the longest text written as one record; longer lines are
// split into partial (P) records that kubelet and crictl join again.
const MaxLine = 16 << 10

// Log writes a container's output to its log file. Both streams of a
// container share the file.
type Log struct {
	mu   sync.Mutex
	path string
	f    *os.File
	refs int
	// maxLine is MaxLine (tests make it smaller).
	maxLine int
}

// Open opens the log file at path for appending, creating it and its
// directory if need be.
func Open(path string) (*Log, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	return &Log{path: path, f: f, maxLine: MaxLine}, nil
}

// Reopen starts a new file at the log's path, as kubelet asks after it has
// renamed the current one to rotate it. No record is lost: each is written
// whole to the old file or the new one.
func (l *Log) Reopen() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		f.Close()
		return errors.New("log is closed")
	}
	old := l.f
	l.f = f
	return old.Close()
}

// Stream returns the writer for one stream ("stdout" or "stderr"). The
// file closes when every stream has been closed.
func (l *Log) Stream(name string) *Stream {
	l.mu.Lock()
	l.refs++
	l.mu.Unlock()
	return &Stream{log: l, name: name}
}

func (l *Log) write(stream string, partial bool, text []byte) {
	tag := "F"
	if partial {
		tag = "P"
	}
	var buf bytes.Buffer
	buf.Grow(len(text) + 64)
	buf.WriteString(time.Now().UTC().Format(time.RFC3339Nano))
	buf.WriteByte(' ')
	buf.WriteString(stream)
	buf.WriteByte(' ')
	buf.WriteString(tag)
	buf.WriteByte(' ')
	buf.Write(text)
	buf.WriteByte('\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Write(buf.Bytes())
	}
}

func (l *Log) release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refs--
	if l.refs > 0 || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Stream assembles one stream's bytes into log records.
type Stream struct {
	log     *Log
	name    string
	pending []byte
	// partial says the last record written was a P: a line is open.
	partial bool
	closed  bool
}

// Write records every complete line of p and keeps the rest for later.
func (s *Stream) Write(p []byte) (int, error) {
	if s.closed {
		return 0, fmt.Errorf("log stream %s is closed", s.name)
	}
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.pending = append(s.pending, p...)
			break
		}
		line := p[:i]
		if len(s.pending) > 0 || s.partial {
			line = append(s.pending, line...)
			s.pending = s.pending[:0]
		}
		s.emit(line)
		p = p[i+1:]
	}
	// A line that is still growing past the limit goes out in pieces.
	max := s.log.maxLine
	for len(s.pending) >= max {
		s.log.write(s.name, true, s.pending[:max])
		s.partial = true
		s.pending = append(s.pending[:0], s.pending[max:]...)
	}
	return n, nil
}

// emit writes a complete line, split into partial records when too long.
func (s *Stream) emit(line []byte) {
	max := s.log.maxLine
	for len(line) > max {
		s.log.write(s.name, true, line[:max])
		line = line[max:]
	}
	s.log.write(s.name, false, line)
	s.partial = false
}

// Close writes an unterminated last line as a full record, and ends a
// line left open by partial records (one that filled them exactly) with
// an empty one, so no P record is left without its F.
func (s *Stream) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if len(s.pending) > 0 || s.partial {
		s.emit(s.pending)
		s.pending = nil
	}
	return s.log.release()
}
