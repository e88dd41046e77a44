// Command wasmbox is the Wasm test image of wasmcri's conformance run: a
// WASI program that behaves like the busybox commands critest runs in its
// containers. It is one module; like busybox, it acts as the command its
// argv[0] names (sh, echo, cat, sleep, top, ls, test, touch, seq, ...;
// httpd stands in for a web server; ln and mv let the security tests plant
// symlinks). Its shell knows what critest's scripts use: ; && || |
// pipelines, redirections, $VAR and $(...), quoting, while/until/for/if, a
// few builtins, and PATH lookup that refuses what is not a file (a masked
// path), as execve does. It is a test fixture, not a shell for people.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	p := &proc{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, vars: map[string]string{}}
	code := p.run(os.Args)
	if code > 125 {
		// wasmtime traps a proc_exit status of 126 or more (not every
		// host can report one); a shell's 126 and 127 leave as 1.
		code = 1
	}
	os.Exit(code)
}

// proc is one command's world: its streams and the shell's variables.
type proc struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	vars           map[string]string
	status         int
	exited         bool
}

type applet func(p *proc, args []string) int

var applets map[string]applet

func init() {
	applets = map[string]applet{
		"sh": sh, "echo": echo, "cat": cat, "sleep": sleep, "top": top, "ls": ls,
		"test": test, "[": test, "touch": touch, "mkdir": mkdir, "rm": rm, "env": env,
		"hostname": hostname, "pwd": pwd, "true": func(*proc, []string) int { return 0 },
		"false": func(*proc, []string) int { return 1 }, "grep": grep, "id": id,
		"pgrep": func(*proc, []string) int { return 1 }, "dd": dd, "head": head, "wc": wc,
		"httpd": httpd, "seq": seq, "sync": func(*proc, []string) int { return 0 },
		"ln": ln, "mv": mv,
	}
}

// run executes argv, picking the applet by argv[0]'s base name; run as
// "wasmbox" or as its .wasm file, the next argument names the applet.
func (p *proc) run(argv []string) int {
	if len(argv) == 0 {
		return 0
	}
	name := path.Base(argv[0])
	if name == "wasmbox" || strings.HasSuffix(name, ".wasm") {
		if len(argv) == 1 {
			return sh(p, []string{"sh"})
		}
		return p.run(argv[1:])
	}
	a, ok := applets[name]
	if !ok {
		fmt.Fprintf(p.stderr, "%s: applet not found\n", name)
		return 127
	}
	return a(p, argv)
}

// errText words an error as busybox does. In wasmcri a write the sandbox
// refuses can only be a write to a read-only mount or root.
func errText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if errno == syscall.EROFS || errno == syscall.EPERM || errno == syscall.EACCES || errno == errNotCapable {
			return "Read-only file system"
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "No such file or directory"
	case errors.Is(err, fs.ErrExist):
		return "File exists"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func echo(p *proc, args []string) int {
	args = args[1:]
	newline, escapes := true, false
	for len(args) > 0 && strings.HasPrefix(args[0], "-") && strings.Trim(args[0][1:], "ne") == "" && len(args[0]) > 1 {
		newline = newline && !strings.Contains(args[0], "n")
		escapes = escapes || strings.Contains(args[0], "e")
		args = args[1:]
	}
	out := strings.Join(args, " ")
	if escapes {
		out = strings.NewReplacer(`\n`, "\n", `\t`, "\t", `\\`, `\`).Replace(out)
	}
	if newline {
		out += "\n"
	}
	io.WriteString(p.stdout, out)
	return 0
}

func cat(p *proc, args []string) int {
	if len(args) == 1 {
		io.Copy(p.stdout, p.stdin)
		return 0
	}
	status := 0
	for _, f := range args[1:] {
		if f == "-" {
			io.Copy(p.stdout, p.stdin)
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(p.stderr, "cat: can't open '%s': %s\n", f, errText(err))
			status = 1
			continue
		}
		p.stdout.Write(b)
	}
	return status
}

func head(p *proc, args []string) int {
	n := 10
	if len(args) > 2 && args[1] == "-n" {
		n, _ = strconv.Atoi(args[2])
	}
	s := bufio.NewScanner(p.stdin)
	for i := 0; i < n && s.Scan(); i++ {
		fmt.Fprintln(p.stdout, s.Text())
	}
	return 0
}

func wc(p *proc, args []string) int {
	b, _ := io.ReadAll(p.stdin)
	if len(args) > 1 && args[1] == "-l" {
		fmt.Fprintln(p.stdout, strings.Count(string(b), "\n"))
		return 0
	}
	fmt.Fprintf(p.stdout, "%d %d %d\n", strings.Count(string(b), "\n"), len(strings.Fields(string(b))), len(b))
	return 0
}

func sleep(p *proc, args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(p.stderr, "sleep: missing operand")
		return 1
	}
	if args[1] == "infinity" {
		for {
			time.Sleep(time.Hour)
		}
	}
	d, err := time.ParseDuration(args[1])
	if err != nil {
		secs, err := strconv.ParseFloat(args[1], 64)
		if err != nil {
			fmt.Fprintf(p.stderr, "sleep: invalid number '%s'\n", args[1])
			return 1
		}
		d = time.Duration(secs * float64(time.Second))
	}
	time.Sleep(d)
	return 0
}

// top stands for a long-running process that prints nothing unasked.
func top(p *proc, args []string) int {
	for {
		time.Sleep(time.Hour)
	}
}

// seq prints the numbers from FIRST (default 1) to LAST.
func seq(p *proc, args []string) int {
	first, last := 1, 0
	var err error
	switch len(args) {
	case 2:
		last, err = strconv.Atoi(args[1])
	case 3:
		if first, err = strconv.Atoi(args[1]); err == nil {
			last, err = strconv.Atoi(args[2])
		}
	default:
		fmt.Fprintln(p.stderr, "usage: seq [FIRST] LAST")
		return 1
	}
	if err != nil {
		fmt.Fprintln(p.stderr, "seq:", err)
		return 1
	}
	for i := first; i <= last; i++ {
		fmt.Fprintln(p.stdout, i)
	}
	return 0
}

// httpd stands in for the web server of critest's network specs: it
// serves on the listeners the runtime hands it (LISTEN_FDS at fd 3…),
// answering every GET with a page, and says it started, as httpd does in
// its log. Given no listener (no port declared) it only stays up.
func httpd(p *proc, args []string) int {
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if n < 1 {
		fmt.Fprintln(p.stderr, "httpd: started; no port declared, nothing to serve")
		return top(p, args)
	}
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<html><body><h1>It works!</h1></body></html>\n")
	})
	errs := make(chan error, n)
	for fd := 3; fd < 3+n; fd++ {
		l, err := net.FileListener(os.NewFile(uintptr(fd), "listener"))
		if err != nil {
			fmt.Fprintf(p.stderr, "httpd: fd %d: %v\n", fd, err)
			return 1
		}
		go func() { errs <- http.Serve(l, page) }()
	}
	fmt.Fprintf(p.stderr, "httpd: started; serving on %d listener(s)\n", n)
	fmt.Fprintln(p.stderr, "httpd:", <-errs)
	return 1
}

func ls(p *proc, args []string) int {
	all := false
	var paths []string
	for _, a := range args[1:] {
		if strings.HasPrefix(a, "-") {
			all = all || strings.ContainsAny(a, "aA")
			continue
		}
		paths = append(paths, a)
	}
	if len(paths) == 0 {
		paths = []string{"."}
	}
	status := 0
	for _, dir := range paths {
		fi, err := os.Stat(dir)
		if err != nil {
			fmt.Fprintf(p.stderr, "ls: %s: %s\n", dir, errText(err))
			status = 1
			continue
		}
		if !fi.IsDir() {
			fmt.Fprintln(p.stdout, dir)
			continue
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			fmt.Fprintf(p.stderr, "ls: %s: %s\n", dir, errText(err))
			status = 1
			continue
		}
		var names []string
		for _, e := range entries {
			if all || !strings.HasPrefix(e.Name(), ".") {
				names = append(names, e.Name())
			}
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintln(p.stdout, n)
		}
	}
	return status
}

func test(p *proc, args []string) int {
	bracket := path.Base(args[0]) == "["
	args = args[1:]
	if bracket {
		if len(args) == 0 || args[len(args)-1] != "]" {
			fmt.Fprintln(p.stderr, "[: missing ]")
			return 2
		}
		args = args[:len(args)-1]
	}
	ok, err := evalTest(args)
	if err != nil {
		fmt.Fprintln(p.stderr, "test:", err)
		return 2
	}
	if ok {
		return 0
	}
	return 1
}

func evalTest(a []string) (bool, error) {
	if len(a) > 0 && a[0] == "!" {
		ok, err := evalTest(a[1:])
		return !ok, err
	}
	switch len(a) {
	case 0:
		return false, nil
	case 1:
		return a[0] != "", nil
	case 2:
		fi, err := os.Stat(a[1])
		switch a[0] {
		case "-e":
			return err == nil, nil
		case "-f":
			return err == nil && fi.Mode().IsRegular(), nil
		case "-d":
			return err == nil && fi.IsDir(), nil
		case "-s":
			return err == nil && fi.Size() > 0, nil
		case "-n":
			return a[1] != "", nil
		case "-z":
			return a[1] == "", nil
		}
	case 3:
		x, y := a[0], a[2]
		switch a[1] {
		case "=", "==":
			return x == y, nil
		case "!=":
			return x != y, nil
		}
		xi, err1 := strconv.Atoi(x)
		yi, err2 := strconv.Atoi(y)
		if err1 != nil || err2 != nil {
			return false, fmt.Errorf("bad number")
		}
		switch a[1] {
		case "-eq":
			return xi == yi, nil
		case "-ne":
			return xi != yi, nil
		case "-lt":
			return xi < yi, nil
		case "-le":
			return xi <= yi, nil
		case "-gt":
			return xi > yi, nil
		case "-ge":
			return xi >= yi, nil
		}
	}
	return false, fmt.Errorf("unknown test %q", strings.Join(a, " "))
}

func touch(p *proc, args []string) int {
	status := 0
	for _, f := range args[1:] {
		if strings.HasPrefix(f, "-") {
			continue
		}
		file, err := os.OpenFile(f, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			fmt.Fprintf(p.stderr, "touch: %s: %s\n", f, errText(err))
			status = 1
			continue
		}
		file.Close()
		now := time.Now()
		os.Chtimes(f, now, now)
	}
	return status
}

// ln [-s] [-f] [--raw] TARGET LINK: the security tests plant symlinks with
// it. --raw makes a symlink LINK relative to the root's descriptor (see
// rawSymlink).
func ln(p *proc, args []string) int {
	symbolic, force, raw := false, false, false
	var names []string
	for _, a := range args[1:] {
		switch {
		case a == "--raw":
			raw = true
		case strings.HasPrefix(a, "-") && len(a) > 1:
			symbolic = symbolic || strings.Contains(a, "s")
			force = force || strings.Contains(a, "f")
		default:
			names = append(names, a)
		}
	}
	if len(names) != 2 {
		fmt.Fprintln(p.stderr, "usage: ln [-s] [-f] TARGET LINK")
		return 1
	}
	if force {
		os.Remove(names[1])
	}
	link := os.Link
	if symbolic {
		link = os.Symlink
	}
	if raw {
		link = rawSymlink
	}
	if err := link(names[0], names[1]); err != nil {
		fmt.Fprintf(p.stderr, "ln: %s: %s\n", names[1], errText(err))
		return 1
	}
	return 0
}

// mv [--raw] SRC DST renames, replacing DST (the security tests rename
// symlinks over mounted files with it). --raw renames relative to the
// root's descriptor (see rawRename).
func mv(p *proc, args []string) int {
	rename := os.Rename
	if len(args) == 4 && args[1] == "--raw" {
		rename, args = rawRename, args[1:]
	}
	if len(args) != 3 {
		fmt.Fprintln(p.stderr, "usage: mv [--raw] SRC DST")
		return 1
	}
	if err := rename(args[1], args[2]); err != nil {
		fmt.Fprintf(p.stderr, "mv: can't rename '%s': %s\n", args[1], errText(err))
		return 1
	}
	return 0
}

func mkdir(p *proc, args []string) int {
	parents := false
	status := 0
	for _, d := range args[1:] {
		if d == "-p" {
			parents = true
			continue
		}
		var err error
		if parents {
			err = os.MkdirAll(d, 0o755)
		} else {
			err = os.Mkdir(d, 0o755)
		}
		if err != nil {
			fmt.Fprintf(p.stderr, "mkdir: can't create directory '%s': %s\n", d, errText(err))
			status = 1
		}
	}
	return status
}

func rm(p *proc, args []string) int {
	force, recursive := false, false
	status := 0
	for _, f := range args[1:] {
		if strings.HasPrefix(f, "-") {
			force = force || strings.Contains(f, "f")
			recursive = recursive || strings.ContainsAny(f, "rR")
			continue
		}
		var err error
		if recursive {
			err = os.RemoveAll(f)
		} else {
			err = os.Remove(f)
		}
		if err != nil && !(force && errors.Is(err, fs.ErrNotExist)) {
			fmt.Fprintf(p.stderr, "rm: can't remove '%s': %s\n", f, errText(err))
			status = 1
		}
	}
	return status
}

func env(p *proc, args []string) int {
	vars := os.Environ()
	sort.Strings(vars)
	for _, kv := range vars {
		fmt.Fprintln(p.stdout, kv)
	}
	return 0
}

// hostname prints the pod's hostname: a Wasm instance has no kernel
// hostname, so the runtime passes it as $HOSTNAME and in /etc/hostname.
func hostname(p *proc, args []string) int {
	h := os.Getenv("HOSTNAME")
	if h == "" {
		b, _ := os.ReadFile("/etc/hostname")
		h = strings.TrimSpace(string(b))
	}
	fmt.Fprintln(p.stdout, h)
	return 0
}

func pwd(p *proc, args []string) int {
	wd, err := os.Getwd()
	if err != nil {
		wd = os.Getenv("PWD")
	}
	fmt.Fprintln(p.stdout, wd)
	return 0
}

// id: a Wasm instance runs as no user; it answers as root, as busybox in
// a container does by default.
func id(p *proc, args []string) int {
	if len(args) > 1 {
		fmt.Fprintln(p.stdout, "0")
		return 0
	}
	fmt.Fprintln(p.stdout, "uid=0(root) gid=0(root) groups=0(root)")
	return 0
}

func grep(p *proc, args []string) int {
	quiet, invert := false, false
	var rest []string
	for _, a := range args[1:] {
		switch a {
		case "-q":
			quiet = true
		case "-v":
			invert = true
		default:
			rest = append(rest, a)
		}
	}
	if len(rest) == 0 {
		fmt.Fprintln(p.stderr, "grep: no pattern")
		return 2
	}
	match := func(s string) bool { return strings.Contains(s, rest[0]) }
	if re, err := regexp.Compile(rest[0]); err == nil {
		match = re.MatchString
	}
	var in io.Reader = p.stdin
	if len(rest) > 1 {
		f, err := os.Open(rest[1])
		if err != nil {
			fmt.Fprintf(p.stderr, "grep: %s: %s\n", rest[1], errText(err))
			return 2
		}
		defer f.Close()
		in = f
	}
	found := false
	s := bufio.NewScanner(in)
	for s.Scan() {
		if match(s.Text()) != invert {
			found = true
			if !quiet {
				fmt.Fprintln(p.stdout, s.Text())
			}
		}
	}
	if found {
		return 0
	}
	return 1
}

// dd copies if= to of= in bs= blocks, count= times or until end of input.
func dd(p *proc, args []string) int {
	in, out, bs, count := "", "", 512, -1
	for _, a := range args[1:] {
		k, v, _ := strings.Cut(a, "=")
		switch k {
		case "if":
			in = v
		case "of":
			out = v
		case "bs":
			bs = int(size(v))
		case "count":
			count, _ = strconv.Atoi(v)
		}
	}
	var r io.Reader = p.stdin
	var w io.Writer = p.stdout
	if in != "" {
		f, err := os.Open(in)
		if err != nil {
			fmt.Fprintf(p.stderr, "dd: can't open '%s': %s\n", in, errText(err))
			return 1
		}
		defer f.Close()
		r = f
	}
	if out != "" {
		f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			fmt.Fprintf(p.stderr, "dd: can't open '%s': %s\n", out, errText(err))
			return 1
		}
		defer f.Close()
		w = f
	}
	buf := make([]byte, bs)
	for i := 0; count < 0 || i < count; i++ {
		n, err := io.ReadFull(r, buf)
		if _, werr := w.Write(buf[:n]); werr != nil {
			fmt.Fprintf(p.stderr, "dd: error writing '%s': %s\n", out, errText(werr))
			return 1
		}
		if err != nil {
			break
		}
	}
	return 0
}

func size(v string) int64 {
	mult := int64(1)
	switch {
	case strings.HasSuffix(v, "K"), strings.HasSuffix(v, "k"):
		mult, v = 1<<10, v[:len(v)-1]
	case strings.HasSuffix(v, "M"):
		mult, v = 1<<20, v[:len(v)-1]
	case strings.HasSuffix(v, "G"):
		mult, v = 1<<30, v[:len(v)-1]
	}
	n, _ := strconv.ParseInt(v, 10, 64)
	return n * mult
}
