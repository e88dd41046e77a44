package wasm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wasmcri/wasmcri/internal/testmodule"
)

// The conformance test program, run as critest runs it: a shell that the
// CRI conformance scripts need, and busybox's wording of errors.
func TestWasmboxRunsCritestScripts(t *testing.T) {
	r := newRuntime(t)
	box := testmodule.Wasmbox(t)
	root, ro := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(ro, "sub"), 0o755)
	os.WriteFile(filepath.Join(root, "greeting"), []byte("hi there\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "bin", "ls"), 0o755) // where a masked path would be
	for _, tc := range []struct {
		argv   []string
		stdin  string
		code   int32
		stdout string
		stderr string
	}{
		{[]string{"echo", "-n", "hello"}, "", 0, "hello", ""},
		{[]string{"sh", "-c", "echo one; echo two"}, "", 0, "one\ntwo\n", ""},
		{[]string{"sh", "-c", "pgrep sleep || true"}, "", 0, "", ""},
		{[]string{"sh", "-c", "exit 3"}, "", 3, "", ""},
		{[]string{"sh", "-c", "false && echo no; true || echo no; echo $?"}, "", 0, "0\n", ""},
		{[]string{"sh", "-c", "touch test.go && [ -f test.go ] && echo 'Found'"}, "", 0, "Found\n", ""},
		{[]string{"sh", "-c", `touch /ro/foo 2>&1 | grep -q "Read-only file system"`}, "", 0, "", ""},
		{[]string{"touch", "/ro/x"}, "", 1, "", "touch: /ro/x: Read-only file system\n"},
		{[]string{"sh", "-c", "echo $(id -u):$(id -g)"}, "", 0, "0:0\n", ""},
		{[]string{"sh", "-c", "X=world; echo \"hello $X\" '$X' ${X}"}, "", 0, "hello world $X world\n", ""},
		{[]string{"sh", "-c", "echo saved > /out.txt; cat /out.txt; cat /greeting | grep there"}, "", 0, "saved\nhi there\n", ""},
		{[]string{"sh", "-c", "i=0; while [ ! -f /flag ]; do touch /flag; echo looped; done; echo out"}, "", 0, "looped\nout\n", ""},
		{[]string{"sh", "-c", "if [ -d /ro/sub ]; then echo dir; else echo none; fi"}, "", 0, "dir\n", ""},
		{[]string{"ls", "-A", "/ro"}, "", 0, "sub\n", ""},
		{[]string{"ls", "-A", "/missing"}, "", 1, "", "ls: /missing: No such file or directory\n"},
		{[]string{"cat", "/etc/none"}, "", 1, "", "cat: can't open '/etc/none': No such file or directory\n"},
		{[]string{"/bin/sh"}, "echo -n hello\n", 0, "hello", ""},
		{[]string{"sh", "-c", "hostname"}, "", 0, "pod-host\n", ""},
		{[]string{"sleep", "0.05"}, "", 0, "", ""},
		{[]string{"sh", "-c", "for i in $(seq 1 3); do echo n$i >> /seq.txt; done; sync; cat /seq.txt"}, "", 0, "n1\nn2\nn3\n", ""},
		// A command on PATH that is not a file cannot run, as execve says.
		{[]string{"/bin/sh", "-c", "ls"}, "", 1, "", "/bin/sh: ls: Permission denied\n"},
		{[]string{"sh", "-c", "pwd"}, "", 0, "/\n", ""},
	} {
		var out, errs syncBuffer
		spec := Spec{Args: tc.argv, Env: []string{"HOSTNAME=pod-host"}, Stdout: &out, Stderr: &errs,
			Dirs: []Dir{{Host: root, Guest: "/"}, {Host: ro, Guest: "/ro", ReadOnly: true}}}
		if tc.stdin != "" {
			spec.Stdin = strings.NewReader(tc.stdin)
		}
		inst, err := r.Start(prepare(t, r, box), spec)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, inst, 10*time.Second)
		if res.ExitCode != tc.code || out.String() != tc.stdout || errs.String() != tc.stderr {
			t.Errorf("%q: exit %d stdout %q stderr %q; want %d %q %q", tc.argv, res.ExitCode, out.String(), errs.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
}
