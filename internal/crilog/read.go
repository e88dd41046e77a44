package crilog

import (
	"bytes"
	"fmt"
	"os"
	"time"
)

// Record is one line of a log file.
type Record struct {
	Time time.Time
	// Stream is "stdout" or "stderr".
	Stream string
	// Partial marks a P record: the line goes on in the stream's next
	// record.
	Partial bool
	Text    string
}

// String is the record without its time: "stdout F text".
func (r Record) String() string {
	tag := "F"
	if r.Partial {
		tag = "P"
	}
	return r.Stream + " " + tag + " " + r.Text
}

// ReadFile reads and parses the log file at path.
func ReadFile(path string) ([]Record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	recs, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

// Parse reads the records of a log. Every record must be in the format,
// newline included: a log whose last record is cut short is an error, as
// is an unknown stream or tag or a time that is not RFC 3339.
func Parse(b []byte) ([]Record, error) {
	var recs []Record
	for n := 1; len(b) > 0; n++ {
		line, rest, ok := bytes.Cut(b, []byte("\n"))
		if !ok {
			return recs, fmt.Errorf("record %d has no newline: %q", n, line)
		}
		b = rest
		ts, after, ok1 := bytes.Cut(line, []byte(" "))
		stream, after, ok2 := bytes.Cut(after, []byte(" "))
		tag, text, ok3 := bytes.Cut(after, []byte(" "))
		if !ok1 || !ok2 || !ok3 {
			return recs, fmt.Errorf("record %d is not <time> <stream> <tag> <text>: %q", n, line)
		}
		t, err := time.Parse(time.RFC3339Nano, string(ts))
		if err != nil {
			return recs, fmt.Errorf("record %d: time: %w", n, err)
		}
		r := Record{Time: t, Stream: string(stream), Text: string(text)}
		if r.Stream != "stdout" && r.Stream != "stderr" {
			return recs, fmt.Errorf("record %d: stream %q", n, stream)
		}
		switch string(tag) {
		case "P":
			r.Partial = true
		case "F":
		default:
			return recs, fmt.Errorf("record %d: tag %q", n, tag)
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// Lines returns the lines written to one stream: the text of each F
// record joined to the P records before it. A line that P records have
// begun and no F has ended yet is left out.
func Lines(recs []Record, stream string) []string {
	var lines []string
	var open []byte
	for _, r := range recs {
		if r.Stream != stream {
			continue
		}
		open = append(open, r.Text...)
		if !r.Partial {
			lines = append(lines, string(open))
			open = open[:0]
		}
	}
	return lines
}
