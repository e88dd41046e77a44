package sandbox

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Port-forward would reach the node's loopback (a pod has no network of
// its own yet): a node-local service on the very port the pod declares
// must get no connection, and the call says why it is refused.
func TestPortForwardNeverReachesTheNode(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c
		}
	}()
	port := int32(l.Addr().(*net.TCPAddr).Port)
	cfg := podConfig("web", e.dir)
	cfg.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: port}}
	sb, err := e.m.RunSandbox(context.Background(), cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []int32{port, port + 1} {
		client, server := net.Pipe()
		err := e.m.PortForward(context.Background(), sb.ID, p, server)
		if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "no network of their own") {
			t.Fatalf("port-forward to %d: %v", p, err)
		}
		// The stream is closed, not left hanging.
		if _, err := client.Read(make([]byte, 1)); err == nil {
			t.Fatal("the stream stayed open")
		}
	}
	// Dial the service ourselves: it answers, and the one connection it
	// accepted is ours, not the pod's.
	mine, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	c := <-accepted
	defer c.Close()
	if c.RemoteAddr().String() != mine.LocalAddr().String() {
		t.Fatalf("the node service's first connection came from %s, not the test", c.RemoteAddr())
	}
}
