package crilogtest

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/crilog"
)

func TestWaitForALineStillBeingWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	l, err := crilog.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	out := l.Stream("stdout")
	out.Write([]byte("tick 1\ntick "))
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Not a wait before an assertion: the line's end comes later, as a
		// module's would, for WaitFor to poll until it has it.
		time.Sleep(100 * time.Millisecond)
		out.Write([]byte("2\n"))
	}()
	WaitFor(t, path, "stdout", "tick 2")
	<-done
	out.Close()
}
