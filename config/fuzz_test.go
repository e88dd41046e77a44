package config

import (
	"os"
	"reflect"
	"testing"
)

// FuzzParse feeds arbitrary text to the config parser: it never panics,
// and whatever it accepts is valid and survives an encode/parse round trip
// unchanged (so `wasmcri config default` and a hand-written file mean the
// same thing).
func FuzzParse(f *testing.F) {
	def, err := Default().Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(def))
	if b, err := os.ReadFile("../deploy/config.toml"); err == nil {
		f.Add(string(b))
	}
	for _, s := range []string{
		"", "version = 1", "version = 2", "root = \"relative\"",
		"[grpc]\naddress = \"unix:///tmp/x.sock\"\nmax_recv_message_size = -1",
		"[image]\npull_timeout = \"1h\"\nmax_layer_size = 1",
		"[runtime]\nhandlers = [\"a\", \"a\"]", "[debug]\npprof_address = \"127.0.0.1:1\"",
		"[registry]\nplain_http = [\"host:port:x\"]", "unknown = 1", "[[grpc]]", "root = \"\\u0000\"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		cfg, err := Parse([]byte(text))
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted a config that does not validate: %v", err)
		}
		b, err := cfg.Encode()
		if err != nil {
			t.Fatalf("accepted a config that does not encode: %v", err)
		}
		again, err := Parse(b)
		if err != nil {
			t.Fatalf("an accepted config does not parse back: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", cfg, again)
		}
	})
}
