// Command demoregistry serves an OCI registry in memory on a loopback
// port, for `make demo` on a machine with no registry program installed.
// It prints the host:port it listens on, then serves until killed.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "where to listen (loopback only)")
	flag.Parse()
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demoregistry:", err)
		os.Exit(1)
	}
	if ip := l.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		fmt.Fprintln(os.Stderr, "demoregistry: listens on loopback addresses only, not", ip)
		os.Exit(1)
	}
	// Printed once listening: the demo waits for this line, not a timer.
	fmt.Println(l.Addr().String())
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	fmt.Fprintln(os.Stderr, "demoregistry:", srv.Serve(l))
	os.Exit(1)
}
