// Package crilogtest helps tests wait on a container's log file.
package crilogtest

import (
	"os"
	"slices"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/crilog"
)

// Timeout is how long WaitFor waits.
const Timeout = 20 * time.Second

// WaitFor polls the log file at path until stream ("stdout" or "stderr")
// has a line of exactly text, and fails t if none comes within Timeout.
// A file that is missing or does not parse yet is polled again; the
// failure says how the file was at the end.
func WaitFor(t testing.TB, path, stream, text string) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for {
		recs, err := crilog.ReadFile(path)
		if err == nil && slices.Contains(crilog.Lines(recs, stream), text) {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(path)
			t.Fatalf("log %s: %s never said %q (last read: %v):\n%s", path, stream, text, err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
