// Command webserver is an HTTP server for WASI preview1, the example of a
// Wasm pod that serves. WASI preview1 cannot open sockets, so the runtime
// opens them: for each TCP port the container declares, wasmcri binds a
// listening socket in the pod's network namespace and hands it over at
// fd 3 and up, saying how many in LISTEN_FDS (and their names in
// LISTEN_FDNAMES), as systemd and `wasmtime run --tcplisten` do. The
// program takes each with net.FileListener and serves on all of them.
//
// Built natively (go build), it listens on -addr instead, so the same
// server can be measured against itself outside Wasm.
//
//	GET  /            a greeting with the server's hostname
//	GET  /healthz     "ok", for probes
//	GET  /bytes/N     N bytes (at most 256 MiB)
//	POST /echo        the request body back
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// maxBytes bounds /bytes/N.
const maxBytes = 256 << 20

func main() {
	addr := flag.String("addr", "", "listen on this address instead of the inherited listeners (native builds)")
	flag.Parse()

	listeners, err := listeners(*addr)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	// wasip1 has no hostname call (Go's os.Hostname says "wasip1"); the
	// runtime passes the pod's in $HOSTNAME, as container runtimes do.
	host := os.Getenv("HOSTNAME")
	if host == "" {
		host, _ = os.Hostname()
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from WebAssembly on %s\n", host)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /bytes/{n}", serveBytes)
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	})

	errs := make(chan error, len(listeners))
	for _, l := range listeners {
		fmt.Printf("serving on %s\n", l.Addr())
		go func() { errs <- http.Serve(l, mux) }()
	}
	log.Fatal(<-errs)
}

// listeners are the sockets the runtime handed over, or one on addr.
func listeners(addr string) ([]net.Listener, error) {
	if addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		return []net.Listener{l}, nil
	}
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if n < 1 {
		return nil, errors.New("no listening sockets (LISTEN_FDS is not set): declare a TCP port on the container, or pass -addr")
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	var ls []net.Listener
	for k := 0; k < n; k++ {
		name := "listener"
		if k < len(names) {
			name = names[k]
		}
		f := os.NewFile(uintptr(3+k), name)
		l, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("fd %d (%s): %w", 3+k, name, err)
		}
		f.Close()
		ls = append(ls, l)
	}
	return ls, nil
}

func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || n < 0 || n > maxBytes {
		http.Error(w, "N must be 0 to 268435456", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(n))
	chunk := make([]byte, 64<<10)
	for k := range chunk {
		chunk[k] = byte('a' + k%26)
	}
	for n > 0 {
		m := min(n, len(chunk))
		if _, err := w.Write(chunk[:m]); err != nil {
			return
		}
		n -= m
	}
}
