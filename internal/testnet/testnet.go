// Package testnet runs small network servers for tests, on 127.0.0.1.
package testnet

import (
	"io"
	"net"
	"testing"
)

// EchoServer echoes every connection back until the test ends and
// returns its port.
func EchoServer(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(conn, conn); conn.Close() }()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}
