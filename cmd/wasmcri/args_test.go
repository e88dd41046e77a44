package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestFlagsFirst(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want string }{
		// As documented: flags after the arguments.
		{"wasmcri image push a.wasm r/x:1 --format compat --insecure", "wasmcri image push --format compat --insecure a.wasm r/x:1"},
		{"wasmcri image push a.wasm --format=compat r/x:1", "wasmcri image push --format=compat a.wasm r/x:1"},
		// A boolean flag takes no value: the next word stays an argument.
		{"wasmcri image push --insecure a.wasm r/x:1", "wasmcri image push --insecure a.wasm r/x:1"},
		{"wasmcri image import f.tar r/x:1 --address /run/a.sock", "wasmcri image import --address /run/a.sock f.tar r/x:1"},
		// After "--" everything is an argument.
		{"wasmcri image push a.wasm -- --format", "wasmcri image push -- a.wasm --format"},
		// An unknown flag moves too, so that the parser names it.
		{"wasmcri image push a.wasm r/x:1 --bogus", "wasmcri image push --bogus a.wasm r/x:1"},
		{"wasmcri serve --root /x", "wasmcri serve --root /x"},
		{"wasmcri image", "wasmcri image"},
		{"wasmcri nosuch a --b", "wasmcri nosuch a --b"},
	} {
		if got := strings.Join(flagsFirst(app, strings.Fields(tc.in)), " "); got != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

// The command line reaches the command as meant, flags anywhere; a
// misplaced unknown flag is named in the error.
func TestFlagsAfterArgumentsReachTheCommand(t *testing.T) {
	var got struct {
		format   string
		insecure bool
		args     []string
	}
	run := func(line string) error {
		app := newApp()
		push := findCommand(findCommand(app.Commands, "image").Subcommands, "push")
		push.Action = func(c *cli.Context) error {
			got.format, got.insecure, got.args = c.String("format"), c.Bool("insecure"), c.Args().Slice()
			return nil
		}
		app.Writer, app.ErrWriter = &bytes.Buffer{}, &bytes.Buffer{}
		return app.Run(flagsFirst(app, strings.Fields(line)))
	}
	if err := run("wasmcri image push a.wasm r/x:1 --format compat --insecure"); err != nil {
		t.Fatal(err)
	}
	if got.format != "compat" || !got.insecure || strings.Join(got.args, " ") != "a.wasm r/x:1" {
		t.Errorf("got %+v", got)
	}
	if err := run("wasmcri image push a.wasm r/x:1 --formatt compat"); err == nil || !strings.Contains(err.Error(), "formatt") {
		t.Errorf("a misspelt flag after the arguments: %v", err)
	}
}

// Every command's help lists its flags.
func TestHelpListsFlags(t *testing.T) {
	var walk func(path []string, cmds []*cli.Command)
	walk = func(path []string, cmds []*cli.Command) {
		for _, c := range cmds {
			line := append(append([]string{}, path...), c.Name)
			if len(c.Subcommands) > 0 {
				walk(line, c.Subcommands)
				continue
			}
			var out bytes.Buffer
			app := newApp()
			app.Writer, app.ErrWriter = &out, &out
			if err := app.Run(append(line, "--help")); err != nil {
				t.Errorf("%s --help: %v", strings.Join(line, " "), err)
			}
			for _, f := range c.Flags {
				if !strings.Contains(out.String(), "--"+f.Names()[0]) {
					t.Errorf("%s --help does not list --%s:\n%s", strings.Join(line, " "), f.Names()[0], out.String())
				}
			}
		}
	}
	walk([]string{"wasmcri"}, newApp().Commands)
}
