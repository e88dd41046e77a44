package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/testcni"
)

// `make demo` works on a machine with no registry program: hack/demo.sh
// with its in-memory registry pushes, pulls and runs the example, shows
// its log and cleans up; its pod has an address on the pod network.
func TestDemoWithoutARegistryProgram(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(repoRoot(), "hack", "demo.sh"))
	cmd.Env = append(os.Environ(), "WASMCRI="+wasmcriBin, "CRICTL="+tool(t, "CRICTL", "crictl"), "REGISTRY=builtin",
		"CNI_DIRS="+strings.Join(testcni.Dirs(), ":"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"in memory", "address 10.89.", "Hello from WebAssembly!", "0 Completed", "demo done"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
