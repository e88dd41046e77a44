package crilog

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var logLine = regexp.MustCompile(`^(\S+) (stdout|stderr) ([FP]) (.*)$`)

// readLog parses a CRI log file into "stream text" lines, checking the
// format of every record.
func readLog(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		m := logLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("log line not in CRI format: %q", line)
		}
		if _, err := time.Parse(time.RFC3339Nano, m[1]); err != nil {
			t.Fatalf("log timestamp %q: %v", m[1], err)
		}
		out = append(out, m[2]+" "+m[3]+" "+m[4])
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

	got := readLog(t, path)
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
	got, want := readLog(t, path), []string{"stdout P " + long, "stdout F "}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("log records:\n%s\nwant:\n%s", trunc(got), trunc(want))
	}
}

// FuzzStreams writes arbitrary bytes, in arbitrary chunks, to the two
// streams of a log (records at most maxLine long: small, to exercise
// splitting, or MaxLine) and reads the file back: every
// record must parse as <RFC3339Nano> <stream> <F|P> <text>, no text be
// longer than the limit, and each stream's P records joined up to the
// next F must give back exactly the bytes written to it, split at '\n'.
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

		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			t.Fatalf("log does not end with a newline: %q", b)
		}
		lines, open := map[string][][]byte{}, map[string][]byte{}
		for _, rec := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
			if len(b) == 0 {
				break
			}
			ts, rest, ok1 := bytes.Cut(rec, []byte(" "))
			name, rest, ok2 := bytes.Cut(rest, []byte(" "))
			tag, text, ok3 := bytes.Cut(rest, []byte(" "))
			if !ok1 || !ok2 || !ok3 {
				t.Fatalf("record %q is not <time> <stream> <tag> <text>", rec)
			}
			if _, err := time.Parse(time.RFC3339Nano, string(ts)); err != nil {
				t.Fatalf("record %q: time: %v", rec, err)
			}
			if streams[string(name)] == nil {
				t.Fatalf("record %q: stream %q", rec, name)
			}
			if len(text) > maxLine {
				t.Fatalf("record of %d bytes, over %d", len(text), maxLine)
			}
			switch string(tag) {
			case "P":
				open[string(name)] = append(open[string(name)], text...)
			case "F":
				lines[string(name)] = append(lines[string(name)], append(open[string(name)], text...))
				open[string(name)] = nil
			default:
				t.Fatalf("record %q: tag %q", rec, tag)
			}
		}
		for name := range streams {
			if len(open[name]) != 0 {
				t.Fatalf("%s: P records without an F: %q", name, open[name])
			}
			want := bytes.Split(written[name], []byte("\n"))
			if len(want[len(want)-1]) == 0 {
				want = want[:len(want)-1]
			}
			got := lines[name]
			if len(got) != len(want) {
				t.Fatalf("%s: %d lines read back, %d written (%q, %q)", name, len(got), len(want), got, want)
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("%s line %d: read back %q, written %q", name, i, got[i], want[i])
				}
			}
		}
	})
}
