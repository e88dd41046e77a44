package sandbox

import (
	"bytes"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/internal/netns"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// A pod with no network of its own (on the node's) is refused: port-forward
// would reach the node's loopback. A node-local service on the very port
// the pod declares gets no connection, and the call says why.
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
		if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "no network of its own") {
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

// Port-forward reaches the pod's own loopback, from inside its namespace:
// a server there on port P answers, byte for byte both ways, while a node
// service on the same port P gets no connection. A stopped pod is refused.
func TestPortForwardReachesThePod(t *testing.T) {
	o := testNetwork(t)
	e := newEnv(t)
	m := e.managerWith(Options{Network: &o})
	ctx := context.Background()
	sb, err := m.RunSandbox(ctx, podConfig("web", e.dir), "")
	if err != nil {
		t.Fatal(err)
	}
	// The pod's echo server on its loopback, port P.
	var inPod net.Listener
	if err := netns.Do(sb.NetNS, func() (err error) { inPod, err = net.Listen("tcp4", "127.0.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer inPod.Close()
	go func() {
		for {
			c, err := inPod.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	port := inPod.Addr().(*net.TCPAddr).Port
	// A node service on the same port P, which must see nothing.
	node, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Skipf("port %d is taken on the node: %v", port, err)
	}
	defer node.Close()
	reached := make(chan struct{}, 1)
	go func() {
		if c, err := node.Accept(); err == nil {
			reached <- struct{}{}
			c.Close()
		}
	}()

	// The stream, as kubelet's streaming server hands it over, here a
	// connection whose client can end its sending alone.
	client, server := streamPair(t)
	done := make(chan error, 1)
	go func() { done <- m.PortForward(ctx, sb.ID, int32(port), server) }()
	payload := bytes.Repeat([]byte("wasm pods serve "), 64<<10) // 1 MiB
	go func() { client.Write(payload); client.CloseWrite() }()
	got, _ := io.ReadAll(client)
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes of %d", len(got), len(payload))
	}
	if err := <-done; err != nil {
		t.Fatalf("port-forward: %v", err)
	}
	select {
	case <-reached:
		t.Fatal("the node's service on the same port got a connection")
	default:
	}

	if err := m.StopSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	_, stopped := net.Pipe()
	if err := m.PortForward(ctx, sb.ID, int32(port), stopped); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("port-forward to a stopped pod: %v", err)
	}
}

// streamPair is two ends of a connection on the node's loopback.
func streamPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); sc.Close() })
	return c.(*net.TCPConn), sc.(*net.TCPConn)
}
