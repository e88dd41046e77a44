package crilog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// readRecords reads the log at path as "stream tag text" strings.
func readRecords(t *testing.T, path string) []string {
	t.Helper()
	recs, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.String()
	}
	return out
}

func TestSplitsLongLinesAndKeepsStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	out, errs := l.Stream("stdout"), l.Stream("stderr")
	long := strings.Repeat("x", MaxLine*2+10)
	out.Write([]byte("first\nsec"))
	errs.Write([]byte("oops\n"))
	out.Write([]byte("ond\n" + long + "\n"))
	out.Write([]byte("no newline at end"))
	out.Close()
	errs.Close()

	got := readRecords(t, path)
	want := []string{
		"stdout F first",
		"stderr F oops",
		"stdout F second",
		"stdout P " + long[:MaxLine],
		"stdout P " + long[MaxLine:2*MaxLine],
		"stdout F " + long[2*MaxLine:],
		"stdout F no newline at end",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("log records:\n%s\nwant:\n%s", trunc(got), trunc(want))
	}
	if _, err := out.Write([]byte("late")); err == nil {
		t.Error("write after close accepted")
	}
}

func trunc(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		if len(l) > 40 {
			l = l[:40] + "..."
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

// A last line that ends exactly at a partial record's end still gets its
// full record when the stream closes.
func TestClosesAnOpenLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	out := l.Stream("stdout")
	long := strings.Repeat("y", MaxLine)
	out.Write([]byte(long))
	out.Close()
	got, want := readRecords(t, path), []string{"stdout P " + long, "stdout F "}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("log records:\n%s\nwant:\n%s", trunc(got), trunc(want))
	}
}

// Open makes the log's directory, and appends to a file that is there:
// a restarted container's log goes on.
func TestOpenMakesTheDirectoryAndAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pod", "c", "0.log")
	for _, text := range []string{"first run\n", "second run\n"} {
		l, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		s := l.Stream("stdout")
		s.Write([]byte(text))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if got := readRecords(t, path); strings.Join(got, "|") != "stdout F first run|stdout F second run" {
		t.Fatalf("log records %q", got)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&^0o640 != 0 {
		t.Errorf("log file mode %v: more than 0640", st.Mode().Perm())
	}
}

// Rotation as kubelet does it: it renames the file, then asks for a
// reopen. Records go to the old file before and to a new one after; the
// file stays open until both streams are closed, and a closed log cannot
// be reopened.
func TestReopenAfterRename(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	out, errs := l.Stream("stdout"), l.Stream("stderr")
	out.Write([]byte("before\n"))
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	out.Write([]byte("renamed\n"))
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	out.Write([]byte("after\n"))
	out.Close()
	errs.Write([]byte("stderr still open\n"))
	errs.Close()
	if got := readRecords(t, rotated); strings.Join(got, "|") != "stdout F before|stdout F renamed" {
		t.Errorf("rotated file: %q", got)
	}
	if got := readRecords(t, path); strings.Join(got, "|") != "stdout F after|stderr F stderr still open" {
		t.Errorf("new file: %q", got)
	}
	if err := l.Reopen(); err == nil {
		t.Error("reopened a closed log")
	}
}

// The two streams of a container are written by two goroutines at once:
// each record stays whole and each stream's lines in order.
func TestStreamsWrittenAtOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	var wg sync.WaitGroup
	for _, name := range []string{"stdout", "stderr"} {
		wg.Add(1)
		go func(s *Stream) {
			defer wg.Done()
			defer s.Close()
			for i := range n {
				fmt.Fprintf(s, "%s line %d\n", name, i)
			}
		}(l.Stream(name))
	}
	wg.Wait()
	recs, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"stdout", "stderr"} {
		lines := Lines(recs, name)
		if len(lines) != n {
			t.Fatalf("%s: %d lines, want %d", name, len(lines), n)
		}
		for i, line := range lines {
			if want := fmt.Sprintf("%s line %d", name, i); line != want {
				t.Fatalf("%s line %d is %q", name, i, line)
			}
		}
	}
}

func TestParse(t *testing.T) {
	recs, err := Parse([]byte("2024-05-01T10:00:00.123456789Z stdout P ab\n" +
		"2024-05-01T10:00:00.2Z stderr F \n" +
		"2024-05-01T12:00:00+02:00 stdout F c d \n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Record{
		{time.Date(2024, 5, 1, 10, 0, 0, 123456789, time.UTC), "stdout", true, "ab"},
		{time.Date(2024, 5, 1, 10, 0, 0, 200000000, time.UTC), "stderr", false, ""},
		{time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC), "stdout", false, "c d "},
	}
	if len(recs) != len(want) {
		t.Fatalf("records %+v", recs)
	}
	for i := range want {
		if !recs[i].Time.Equal(want[i].Time) || recs[i].Stream != want[i].Stream || recs[i].Partial != want[i].Partial || recs[i].Text != want[i].Text {
			t.Errorf("record %d = %+v, want %+v", i, recs[i], want[i])
		}
	}
	if got := Lines(recs, "stdout"); strings.Join(got, "|") != "abc d " {
		t.Errorf("stdout lines %q", got)
	}
	if got := Lines(recs, "stderr"); len(got) != 1 || got[0] != "" {
		t.Errorf("stderr lines %q", got)
	}
	if recs, err := Parse(nil); recs != nil || err != nil {
		t.Errorf("empty log: %v, %v", recs, err)
	}

	for name, log := range map[string]string{
		"no newline":   "2024-05-01T10:00:00Z stdout F cut",
		"no text":      "2024-05-01T10:00:00Z stdout F\n",
		"no tag":       "2024-05-01T10:00:00Z stdout\n",
		"bad time":     "yesterday stdout F x\n",
		"bad stream":   "2024-05-01T10:00:00Z stdin F x\n",
		"bad tag":      "2024-05-01T10:00:00Z stdout X x\n",
		"empty record": "2024-05-01T10:00:00Z stdout F ok\n\n",
	} {
		if _, err := Parse([]byte(log)); err == nil {
			t.Errorf("%s: parsed %q", name, log)
		}
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// A line begun by P records and not ended is no line yet.
func TestLinesLeaveOutAnOpenLine(t *testing.T) {
	recs := []Record{{Stream: "stdout", Text: "done"}, {Stream: "stdout", Partial: true, Text: "half"}}
	if got := Lines(recs, "stdout"); len(got) != 1 || got[0] != "done" {
		t.Fatalf("lines %q", got)
	}
}

// FuzzStreams writes arbitrary bytes, in arbitrary chunks, to the two
// streams of a log (records at most maxLine long: small, to exercise
// splitting, or MaxLine) and reads the file back: it must parse, no text
// be longer than the limit, no stream end on a P record, and each
// stream's lines must be exactly the bytes written to it, split at '\n'.
//
// cuts says how to split data: each byte is one chunk, of its low 6 bits
// in length, for stderr if its high bit is set, else stdout; what cuts
// leaves goes to stdout.
func FuzzStreams(f *testing.F) {
	f.Add([]byte("first\nsecond\n"), []byte{3, 0x82, 40}, uint16(0))
	f.Add([]byte("no newline at end"), []byte{}, uint16(4))
	f.Add([]byte("exactly8"), []byte{8}, uint16(7))
	f.Add([]byte("\n\n\nx\n\xff\xfe\r\n"), []byte{1, 0x81, 1, 0x81, 2}, uint16(2))
	f.Add([]byte(strings.Repeat("z", 3*MaxLine)+"\n"+strings.Repeat("w", MaxLine)), []byte{63, 0xbf}, uint16(0x8000))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data, cuts []byte, limit uint16) {
		maxLine := int(limit%64) + 1
		if limit&0x8000 != 0 {
			maxLine = MaxLine
		} else if len(data) > 4<<10 {
			// Thousands of records a run would only slow the fuzzer.
			data = data[:4<<10]
		}
		tmp, err := os.CreateTemp(dir, "log")
		if err != nil {
			t.Fatal(err)
		}
		tmp.Close()
		path := tmp.Name()
		defer os.Remove(path)
		l, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		l.maxLine = maxLine
		streams := map[string]*Stream{"stdout": l.Stream("stdout"), "stderr": l.Stream("stderr")}
		written := map[string][]byte{}
		write := func(name string, p []byte) {
			if n, err := streams[name].Write(p); n != len(p) || err != nil {
				t.Fatalf("write of %d bytes: %d, %v", len(p), n, err)
			}
			written[name] = append(written[name], p...)
		}
		rest := data
		for _, c := range cuts {
			n := min(int(c&0x3f), len(rest))
			name := "stdout"
			if c&0x80 != 0 {
				name = "stderr"
			}
			write(name, rest[:n])
			rest = rest[n:]
		}
		write("stdout", rest)
		for _, s := range streams {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}

		recs, err := ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		last := map[string]Record{}
		for _, r := range recs {
			if len(r.Text) > maxLine {
				t.Fatalf("record of %d bytes, over %d", len(r.Text), maxLine)
			}
			last[r.Stream] = r
		}
		for name := range streams {
			if last[name].Partial {
				t.Fatalf("%s ends on a P record: %q", name, last[name].Text)
			}
			want := bytes.Split(written[name], []byte("\n"))
			if len(want[len(want)-1]) == 0 {
				want = want[:len(want)-1]
			}
			got := Lines(recs, name)
			if len(got) != len(want) {
				t.Fatalf("%s: %d lines read back, %d written (%q, %q)", name, len(got), len(want), got, want)
			}
			for i := range want {
				if got[i] != string(want[i]) {
					t.Fatalf("%s line %d: read back %q, written %q", name, i, got[i], want[i])
				}
			}
		}
	})
}
