package wasm

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestCRILogSplitsLongLinesAndKeepsStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	l, err := OpenCRILog(path)
	if err != nil {
		t.Fatal(err)
	}
	out, errs := l.Stream("stdout"), l.Stream("stderr")
	long := strings.Repeat("x", MaxLogLine*2+10)
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
		"stdout P " + long[:MaxLogLine],
		"stdout P " + long[MaxLogLine:2*MaxLogLine],
		"stdout F " + long[2*MaxLogLine:],
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
