package image

import (
	"os"
	"testing"

	"github.com/containerd/log"
)

func TestMain(m *testing.M) {
	// containerd's libraries log through logrus; keep test output to ours.
	_ = log.SetLevel("error")
	os.Exit(m.Run())
}
