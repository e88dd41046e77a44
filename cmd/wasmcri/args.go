package main

import (
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// flagsFirst moves the flags of a command line that come after its
// positional arguments in front of them, so that
// `wasmcri image push FILE REF --format compat` works as crictl and
// kubectl users expect: urfave/cli v2 stops reading flags at the first
// positional argument. Arguments after "--" stay positional. A flag the
// command does not define is moved too, so the parser names it in its
// error.
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	// Find the command the line runs: names up to the first other word.
	var cmd *cli.Command
	commands, i := app.Commands, 1
	for ; i < len(args); i++ {
		next := findCommand(commands, args[i])
		if next == nil {
			break
		}
		cmd, commands = next, next.Subcommands
	}
	if cmd == nil || len(cmd.Subcommands) > 0 {
		return args
	}
	var flags, positional []string
	dashDash := false
	rest := args[i:]
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		switch {
		case a == "--":
			dashDash = true
			positional = append(positional, rest[j+1:]...)
			j = len(rest)
		case len(a) > 1 && a[0] == '-':
			flags = append(flags, a)
			name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !hasValue && takesValue(cmd, name) && j+1 < len(rest) {
				j++
				flags = append(flags, rest[j])
			}
		default:
			positional = append(positional, a)
		}
	}
	out := append(slices.Clone(args[:i]), flags...)
	if dashDash {
		out = append(out, "--")
	}
	return append(out, positional...)
}

func findCommand(commands []*cli.Command, name string) *cli.Command {
	for _, c := range commands {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// takesValue says whether the command's flag called name reads the next
// word as its value: every flag but a boolean one does.
func takesValue(cmd *cli.Command, name string) bool {
	for _, f := range cmd.Flags {
		if slices.Contains(f.Names(), name) {
			_, isBool := f.(*cli.BoolFlag)
			return !isBool
		}
	}
	return false
}
