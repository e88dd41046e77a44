package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
)

// sh runs `sh -c SCRIPT [NAME ARGS...]`, or the lines of its standard
// input one at a time (an interactive shell, as attach drives it).
func sh(p *proc, args []string) int {
	p.vars["0"] = args[0]
	if len(args) > 2 && args[1] == "-c" {
		for i, a := range args[3:] {
			p.vars[strconv.Itoa(i)] = a
		}
		return p.script(args[2])
	}
	r := bufio.NewReader(p.stdin)
	for {
		line, err := r.ReadString('\n')
		if strings.TrimSpace(line) != "" {
			p.script(line)
			if p.exited {
				return p.status
			}
		}
		if err != nil {
			return p.status
		}
	}
}

// script parses and runs shell text, returning the last status.
func (p *proc) script(text string) int {
	toks, err := lex(text)
	if err != nil {
		fmt.Fprintln(p.stderr, "sh:", err)
		return 2
	}
	ps := &parser{toks: toks}
	list, err := ps.list(nil)
	if err == nil && ps.pos < len(ps.toks) {
		err = fmt.Errorf("syntax error near %q", ps.toks[ps.pos].text)
	}
	if err != nil {
		fmt.Fprintln(p.stderr, "sh:", err)
		return 2
	}
	p.exec(list)
	return p.status
}

// --- lexing ---------------------------------------------------------------

type token struct {
	text string
	op   bool // an operator (; && || | newline), not a word
}

// lex splits shell text into words, keeping each word's quotes for
// expansion, and operators.
func lex(s string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			i++
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '\n' || c == ';':
			toks = append(toks, token{text: ";", op: true})
			i++
		case c == '&' && i+1 < len(s) && s[i+1] == '&':
			toks = append(toks, token{text: "&&", op: true})
			i += 2
		case c == '|' && i+1 < len(s) && s[i+1] == '|':
			toks = append(toks, token{text: "||", op: true})
			i += 2
		case c == '|':
			toks = append(toks, token{text: "|", op: true})
			i++
		default:
			j, err := wordEnd(s, i)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{text: s[i:j]})
			i = j
		}
	}
	return toks, nil
}

// wordEnd finds where the word starting at i ends, across quotes and $(...).
func wordEnd(s string, i int) (int, error) {
	for i < len(s) {
		switch c := s[i]; c {
		case ' ', '\t', '\n', ';', '|':
			return i, nil
		case '&':
			if i+1 < len(s) && s[i+1] == '&' {
				return i, nil
			}
			i++
		case '\\':
			i += 2
		case '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return 0, fmt.Errorf("unterminated quote")
			}
			i += j + 2
		case '"':
			i++
			for i < len(s) && s[i] != '"' {
				if s[i] == '\\' {
					i++
				}
				i++
			}
			if i >= len(s) {
				return 0, fmt.Errorf("unterminated quote")
			}
			i++
		case '$':
			if i+1 < len(s) && s[i+1] == '(' {
				j, err := closeParen(s, i+1)
				if err != nil {
					return 0, err
				}
				i = j + 1
				continue
			}
			i++
		default:
			i++
		}
	}
	return i, nil
}

func closeParen(s string, open int) (int, error) {
	depth := 0
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			if depth--; depth == 0 {
				return i, nil
			}
		}
	}
	return 0, fmt.Errorf("unterminated $(")
}

// --- parsing --------------------------------------------------------------

// node is a parsed command list, pipeline, loop, conditional or command.
type node struct {
	kind     string // "list", "pipe", "cmd", "while", "until", "for", "if", "group"
	ops      []string
	children []*node
	words    []string
}

type parser struct {
	toks []token
	pos  int
}

func (ps *parser) peek() (token, bool) {
	if ps.pos < len(ps.toks) {
		return ps.toks[ps.pos], true
	}
	return token{}, false
}

// list parses pipelines joined by ; && || until one of the stop words.
func (ps *parser) list(stop []string) (*node, error) {
	n := &node{kind: "list"}
	for {
		for {
			t, ok := ps.peek()
			if !ok || !(t.op && t.text == ";") {
				break
			}
			ps.pos++
		}
		t, ok := ps.peek()
		if !ok || (!t.op && contains(stop, t.text)) {
			return n, nil
		}
		pipe, err := ps.pipeline(stop)
		if err != nil {
			return nil, err
		}
		n.children = append(n.children, pipe)
		t, ok = ps.peek()
		if !ok {
			return n, nil
		}
		switch {
		case t.op && (t.text == "&&" || t.text == "||"):
			n.ops = append(n.ops, t.text)
			ps.pos++
		case t.op && t.text == ";":
			n.ops = append(n.ops, ";")
		case !t.op && contains(stop, t.text):
			return n, nil
		default:
			return nil, fmt.Errorf("syntax error near %q", t.text)
		}
	}
}

func (ps *parser) pipeline(stop []string) (*node, error) {
	n := &node{kind: "pipe"}
	for {
		c, err := ps.command(stop)
		if err != nil {
			return nil, err
		}
		n.children = append(n.children, c)
		if t, ok := ps.peek(); ok && t.op && t.text == "|" {
			ps.pos++
			continue
		}
		return n, nil
	}
}

func (ps *parser) expect(word string) error {
	t, ok := ps.peek()
	if !ok || t.op || t.text != word {
		return fmt.Errorf("expected %q", word)
	}
	ps.pos++
	return nil
}

func (ps *parser) command(stop []string) (*node, error) {
	t, ok := ps.peek()
	if !ok || t.op {
		return nil, fmt.Errorf("missing command")
	}
	switch t.text {
	case "while", "until":
		ps.pos++
		cond, err := ps.list([]string{"do"})
		if err != nil {
			return nil, err
		}
		if err := ps.expect("do"); err != nil {
			return nil, err
		}
		body, err := ps.list([]string{"done"})
		if err != nil {
			return nil, err
		}
		if err := ps.expect("done"); err != nil {
			return nil, err
		}
		return &node{kind: t.text, children: []*node{cond, body}}, nil
	case "for":
		// for NAME in WORDS; do LIST; done
		ps.pos++
		name, ok := ps.peek()
		if !ok || name.op {
			return nil, fmt.Errorf("for: missing variable")
		}
		ps.pos++
		if err := ps.expect("in"); err != nil {
			return nil, err
		}
		n := &node{kind: "for", words: []string{name.text}}
		for {
			t, ok := ps.peek()
			if !ok || t.op {
				break
			}
			n.words = append(n.words, t.text)
			ps.pos++
		}
		for t, ok := ps.peek(); ok && t.op && t.text == ";"; t, ok = ps.peek() {
			ps.pos++
		}
		if err := ps.expect("do"); err != nil {
			return nil, err
		}
		body, err := ps.list([]string{"done"})
		if err != nil {
			return nil, err
		}
		n.children = []*node{body}
		return n, ps.expect("done")
	case "if":
		ps.pos++
		cond, err := ps.list([]string{"then"})
		if err != nil {
			return nil, err
		}
		if err := ps.expect("then"); err != nil {
			return nil, err
		}
		then, err := ps.list([]string{"else", "fi"})
		if err != nil {
			return nil, err
		}
		n := &node{kind: "if", children: []*node{cond, then}}
		if t, _ := ps.peek(); t.text == "else" {
			ps.pos++
			els, err := ps.list([]string{"fi"})
			if err != nil {
				return nil, err
			}
			n.children = append(n.children, els)
		}
		return n, ps.expect("fi")
	case "{":
		ps.pos++
		body, err := ps.list([]string{"}"})
		if err != nil {
			return nil, err
		}
		return &node{kind: "group", children: []*node{body}}, ps.expect("}")
	}
	n := &node{kind: "cmd"}
	for {
		t, ok := ps.peek()
		if !ok || t.op || (len(n.words) > 0 && contains(stop, t.text) && false) {
			break
		}
		n.words = append(n.words, t.text)
		ps.pos++
	}
	return n, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// --- execution ------------------------------------------------------------

func (p *proc) exec(n *node) {
	if p.exited {
		return
	}
	switch n.kind {
	case "list":
		for i, c := range n.children {
			if i > 0 {
				op := n.ops[i-1]
				if (op == "&&" && p.status != 0) || (op == "||" && p.status == 0) {
					continue
				}
			}
			p.exec(c)
			if p.exited {
				return
			}
		}
	case "pipe":
		p.pipe(n.children)
	case "while", "until":
		for !p.exited {
			p.exec(n.children[0])
			if (p.status == 0) != (n.kind == "while") {
				break
			}
			p.exec(n.children[1])
		}
		p.status = 0
	case "for":
		var values []string
		for _, w := range n.words[1:] {
			values = append(values, p.expandFields(w)...)
		}
		p.status = 0
		for _, v := range values {
			if p.exited {
				break
			}
			p.vars[n.words[0]] = v
			p.exec(n.children[0])
		}
	case "if":
		p.exec(n.children[0])
		switch {
		case p.status == 0:
			p.exec(n.children[1])
		case len(n.children) > 2:
			p.exec(n.children[2])
		default:
			p.status = 0
		}
	case "group":
		p.exec(n.children[0])
	case "cmd":
		p.command(n.words)
	}
}

// pipe runs commands one after another, each reading the output of the one
// before: enough for the short pipes of test scripts.
func (p *proc) pipe(cmds []*node) {
	if len(cmds) == 1 {
		p.exec(cmds[0])
		return
	}
	in, out := p.stdin, p.stdout
	for i, c := range cmds {
		var buf bytes.Buffer
		sub := *p
		sub.stdin = in
		if i < len(cmds)-1 {
			sub.stdout = &buf
		} else {
			sub.stdout = out
		}
		sub.exec(c)
		p.status, p.exited = sub.status, sub.exited
		in = &buf
	}
}

// command expands words, applies redirections and runs a builtin or applet.
func (p *proc) command(raw []string) {
	var words []string
	stdin, stdout, stderr := p.stdin, p.stdout, p.stderr
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	var assigns []string
	for i := 0; i < len(raw); i++ {
		w := raw[i]
		if op, target, ok := redirection(w); ok {
			if target == "" && i+1 < len(raw) {
				i++
				target = raw[i]
			}
			target = p.expand(target)
			switch op {
			case ">", "1>", ">>", "1>>", "2>", "2>>":
				flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
				if strings.HasSuffix(op, ">>") {
					flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
				}
				f, err := os.OpenFile(target, flags, 0o644)
				if err != nil {
					fmt.Fprintf(p.stderr, "sh: can't create %s: %s\n", target, errText(err))
					p.status = 1
					return
				}
				closers = append(closers, f)
				if strings.HasPrefix(op, "2") {
					stderr = f
				} else {
					stdout = f
				}
			case "<":
				f, err := os.Open(target)
				if err != nil {
					fmt.Fprintf(p.stderr, "sh: can't open %s: %s\n", target, errText(err))
					p.status = 1
					return
				}
				closers = append(closers, f)
				stdin = f
			case "2>&1":
				stderr = stdout
			case ">&2", "1>&2":
				stdout = stderr
			}
			continue
		}
		if len(words) == 0 && isAssignment(w) {
			assigns = append(assigns, w)
			continue
		}
		words = append(words, p.expandFields(w)...)
	}
	for _, a := range assigns {
		k, v, _ := strings.Cut(a, "=")
		p.vars[k] = p.expand(v)
	}
	if len(words) == 0 {
		p.status = 0
		return
	}
	sub := &proc{stdin: stdin, stdout: stdout, stderr: stderr, vars: p.vars}
	switch words[0] {
	case "exit":
		p.status = 0
		if len(words) > 1 {
			p.status, _ = strconv.Atoi(words[1])
		}
		p.exited = true
		return
	case "cd":
		dir := "/"
		if len(words) > 1 {
			dir = words[1]
		}
		if err := os.Chdir(dir); err != nil {
			fmt.Fprintf(stderr, "sh: cd: can't cd to %s: %s\n", dir, errText(err))
			p.status = 1
			return
		}
		p.status = 0
		return
	case "export":
		for _, a := range words[1:] {
			if k, v, ok := strings.Cut(a, "="); ok {
				os.Setenv(k, v)
			}
		}
		p.status = 0
		return
	case ":":
		p.status = 0
		return
	case "exec":
		words = words[1:]
		if len(words) == 0 {
			p.status = 0
			return
		}
	}
	if msg := p.unrunnable(words[0]); msg != "" {
		fmt.Fprintf(stderr, "%s: %s: %s\n", p.vars["0"], words[0], msg)
		p.status = 126
		return
	}
	p.status = sub.run(words)
}

// unrunnable says why a command the shell finds on PATH cannot run, as
// execve would: only a regular file (or a link to one) can. A command the
// root does not hold runs as the applet of that name, so wasmbox works
// without its image's files too.
func (p *proc) unrunnable(cmd string) string {
	var candidates []string
	if strings.Contains(cmd, "/") {
		candidates = []string{cmd}
	} else {
		search := os.Getenv("PATH")
		if search == "" {
			search = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		}
		for _, dir := range strings.Split(search, ":") {
			candidates = append(candidates, path.Join(dir, cmd))
		}
	}
	for _, c := range candidates {
		fi, err := os.Stat(c)
		switch {
		case err != nil:
			continue
		case fi.Mode().IsRegular():
			return ""
		default:
			return "Permission denied"
		}
	}
	return ""
}

func isAssignment(w string) bool {
	k, _, ok := strings.Cut(w, "=")
	if !ok || k == "" {
		return false
	}
	for _, r := range k {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// redirection recognizes >file, > file, 2>&1 and their kin.
func redirection(w string) (op, target string, ok bool) {
	for _, op := range []string{"2>&1", "1>&2", ">&2", "1>>", "2>>", ">>", "1>", "2>", ">", "<"} {
		if strings.HasPrefix(w, op) {
			return op, w[len(op):], true
		}
	}
	return "", "", false
}

// expandFields expands a word; an unquoted $(...) or $VAR splits on spaces.
func (p *proc) expandFields(w string) []string {
	s := p.expand(w)
	if strings.ContainsAny(w, `"'`) || !strings.Contains(w, "$") {
		return []string{s}
	}
	return strings.Fields(s)
}

// expand removes quotes and substitutes $VAR, ${VAR}, $? and $(...).
func (p *proc) expand(w string) string {
	var b strings.Builder
	quote := byte(0)
	for i := 0; i < len(w); i++ {
		c := w[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				b.WriteByte(c)
			}
		case c == '\\' && i+1 < len(w):
			i++
			b.WriteByte(w[i])
		case c == '\'' && quote == 0, c == '"' && quote == 0:
			quote = c
		case c == '"' && quote == '"':
			quote = 0
		case c == '$' && i+1 < len(w):
			n, v := p.dollar(w[i:])
			b.WriteString(v)
			i += n - 1
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// dollar expands the $ form at the start of s, returning its length.
func (p *proc) dollar(s string) (int, string) {
	switch {
	case strings.HasPrefix(s, "$("):
		end, err := closeParen(s, 1)
		if err != nil {
			return len(s), ""
		}
		var out bytes.Buffer
		sub := &proc{stdin: p.stdin, stdout: &out, stderr: p.stderr, vars: p.vars}
		sub.script(s[2:end])
		return end + 1, strings.TrimRight(out.String(), "\n")
	case strings.HasPrefix(s, "${"):
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return len(s), ""
		}
		return end + 1, p.lookup(s[2:end])
	case strings.HasPrefix(s, "$?"):
		return 2, strconv.Itoa(p.status)
	}
	j := 1
	for j < len(s) && (s[j] == '_' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= '0' && s[j] <= '9') {
		j++
	}
	if j == 1 {
		return 1, "$"
	}
	return j, p.lookup(s[1:j])
}

func (p *proc) lookup(name string) string {
	if v, ok := p.vars[name]; ok {
		return v
	}
	return os.Getenv(name)
}
