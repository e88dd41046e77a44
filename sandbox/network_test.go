package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/wasmcri/wasmcri/internal/netns"
	"github.com/wasmcri/wasmcri/internal/testcni"
	"github.com/wasmcri/wasmcri/internal/testmodule"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// testNetwork is a built-in network of the test's own: real plugins, a
// bridge and a subnet no other test or daemon uses, removed at the end.
func testNetwork(t *testing.T) NetworkOptions {
	t.Helper()
	dirs := testcni.Require(t)
	bridge, subnet := testcni.Network(t, "10.252")
	dir := t.TempDir()
	testcni.UnpinAtEnd(t, filepath.Join(dir, "netns"))
	return NetworkOptions{
		PluginDirs: dirs, ConfDir: filepath.Join(dir, "net.d"), NetNSDir: filepath.Join(dir, "netns"),
		DefaultBridge: bridge, DefaultSubnet: subnet, IPAMDir: filepath.Join(dir, "ipam"),
	}
}

// links are the names of the host's network interfaces.
func links(t *testing.T) map[string]bool {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, i := range ifs {
		m[i.Name] = true
	}
	return m
}

// Two pods on the built-in network get their own addresses in its subnet
// on eth0, reach each other and are reached from the node; detaching them
// leaves no link and no lease behind.
func TestBuiltInNetwork(t *testing.T) {
	o := testNetwork(t)
	n, err := newPodNetwork(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.status(); err != nil {
		t.Fatalf("status: %v", err)
	}
	ctx := context.Background()
	before := links(t)
	type pod struct {
		id, ns, ip string
		cfg        *runtimeapi.PodSandboxConfig
	}
	var pods []pod
	_, subnet, _ := net.ParseCIDR(o.DefaultSubnet)
	for _, id := range []string{"pod-a", "pod-b"} {
		ns, err := netns.Create(o.NetNSDir, id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netns.Remove(ns) })
		cfg := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: id, Namespace: "test", Uid: id}}
		ips, err := n.attach(ctx, id, ns, cfg)
		if err != nil {
			t.Fatalf("attach %s: %v", id, err)
		}
		if len(ips) != 1 || !subnet.Contains(net.ParseIP(ips[0])) {
			t.Fatalf("%s got %v, not one address in %s", id, ips, subnet)
		}
		pods = append(pods, pod{id, ns, ips[0], cfg})
	}
	if pods[0].ip == pods[1].ip {
		t.Fatalf("both pods got %s", pods[0].ip)
	}
	// eth0 inside pod A holds its address; a server there answers from
	// the node and from pod B.
	var l net.Listener
	if err := netns.Do(pods[0].ns, func() error {
		eth, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		addrs, _ := eth.Addrs()
		if len(addrs) == 0 || addrs[0].(*net.IPNet).IP.String() != pods[0].ip {
			return fmt.Errorf("eth0 has %v, not %s", addrs, pods[0].ip)
		}
		l, err = net.Listen("tcp", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go testcni.Answer(l, "hello from pod-a")
	addr := net.JoinHostPort(pods[0].ip, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	read := func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if string(b) != "hello from pod-a" {
			return fmt.Errorf("read %q, %v", b, err)
		}
		return nil
	}
	if err := read(); err != nil {
		t.Fatalf("from the node: %v", err)
	}
	if err := netns.Do(pods[1].ns, read); err != nil {
		t.Fatalf("from pod-b: %v", err)
	}

	for _, p := range pods {
		if err := n.detach(ctx, p.id, p.ns, p.cfg); err != nil {
			t.Fatalf("detach %s: %v", p.id, err)
		}
		if err := n.detach(ctx, p.id, p.ns, p.cfg); err != nil {
			t.Fatalf("detach %s again: %v", p.id, err)
		}
		if err := netns.Remove(p.ns); err != nil {
			t.Fatal(err)
		}
	}
	for name := range links(t) {
		if !before[name] && name != o.DefaultBridge {
			t.Errorf("link %s left behind", name)
		}
	}
	leases, _ := filepath.Glob(filepath.Join(o.IPAMDir, defaultNetworkName, "10.*"))
	if len(leases) != 0 {
		t.Errorf("leases left: %v", leases)
	}
}

// A pod's lifecycle on the pod network: RunSandbox gives it a namespace
// and an address, a restart of the daemon keeps both, StopSandbox takes it
// off the network and RemoveSandbox removes the namespace; a pod on the
// node's network gets neither.
func TestPodNetworkLifecycle(t *testing.T) {
	o := testNetwork(t)
	e := newEnv(t)
	m := e.managerWith(Options{Network: &o})
	if err := m.NetworkStatus(); err != nil {
		t.Fatalf("network not ready: %v", err)
	}
	ctx := context.Background()
	sb, err := m.RunSandbox(ctx, podConfig("web", e.dir), "")
	if err != nil {
		t.Fatal(err)
	}
	if sb.NetNS != filepath.Join(o.NetNSDir, sb.ID) || !netns.IsPinned(sb.NetNS) || len(sb.IPs) != 1 {
		t.Fatalf("sandbox network: %s (pinned %v), %v", sb.NetNS, netns.IsPinned(sb.NetNS), sb.IPs)
	}
	hostCfg := podConfig("host", e.dir)
	hostCfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}}
	host, err := m.RunSandbox(ctx, hostCfg, "")
	if err != nil {
		t.Fatal(err)
	}
	if host.NetNS != "" || len(host.IPs) != 0 {
		t.Fatalf("a host-network pod got %s %v", host.NetNS, host.IPs)
	}
	// A container's /etc/hosts names the pod's address; a host-network
	// pod's is the node's.
	img := e.image("hello", testmodule.Hello(t))
	for _, p := range []struct {
		sb   Sandbox
		want string
	}{{sb, sb.IPs[0] + "\tweb\n"}, {host, readFile(t, "/etc/hosts")}} {
		c, err := m.CreateContainer(ctx, p.sb.ID, ctrConfig("app", img))
		if err != nil {
			t.Fatal(err)
		}
		if hosts := readFile(t, filepath.Join(m.rootfs(c.ID), "etc", "hosts")); !strings.Contains(hosts, p.want) {
			t.Errorf("/etc/hosts of a container in %s:\n%s\nwant %q", p.sb.Config.Metadata.Name, hosts, p.want)
		}
	}

	// A new manager on the same state (the daemon restarted) keeps the
	// pod's namespace and address.
	m.Shutdown()
	m = e.managerWith(Options{Network: &o})
	again, err := m.Sandbox(sb.ID)
	if err != nil || again.NetNS != sb.NetNS || !slices.Equal(again.IPs, sb.IPs) || again.State != SandboxReady || !netns.IsPinned(sb.NetNS) {
		t.Fatalf("after a restart: %+v, %v", again, err)
	}

	if err := m.StopSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	stopped, _ := m.Sandbox(sb.ID)
	if !stopped.NetworkDetached || !netns.IsPinned(sb.NetNS) {
		t.Fatalf("after stop: detached %v, namespace pinned %v", stopped.NetworkDetached, netns.IsPinned(sb.NetNS))
	}
	if leases, _ := filepath.Glob(filepath.Join(o.IPAMDir, defaultNetworkName, "10.*")); len(leases) != 0 {
		t.Fatalf("leases after stop: %v", leases)
	}
	if err := m.StopSandbox(ctx, sb.ID); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if err := m.RemoveSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sb.NetNS); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("namespace after remove: %v", err)
	}
}

// What a crash leaves is reclaimed at start-up: a namespace attached but
// never recorded is detached (its lease freed) and removed; a recorded one
// that is gone (the node restarted) leaves its sandbox not ready.
func TestCrashLeftNetworksReclaimed(t *testing.T) {
	o := testNetwork(t)
	e := newEnv(t)
	m := e.managerWith(Options{Network: &o})
	ctx := context.Background()
	kept, err := m.RunSandbox(ctx, podConfig("kept", e.dir), "")
	if err != nil {
		t.Fatal(err)
	}
	lost, err := m.RunSandbox(ctx, podConfig("lost", e.dir), "")
	if err != nil {
		t.Fatal(err)
	}
	m.Shutdown()
	// The crash: a pod attached with no record, and a recorded pod's
	// namespace gone.
	stray, err := netns.Create(o.NetNSDir, "stray-pod")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.network.attach(ctx, "stray-pod", stray, podConfig("stray", e.dir)); err != nil {
		t.Fatal(err)
	}
	if err := netns.Remove(lost.NetNS); err != nil {
		t.Fatal(err)
	}

	m = e.managerWith(Options{Network: &o})
	if _, err := os.Stat(stray); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stray namespace: %v", err)
	}
	leases, _ := filepath.Glob(filepath.Join(o.IPAMDir, defaultNetworkName, "10.*"))
	if len(leases) != 1 || filepath.Base(leases[0]) != kept.IPs[0] {
		t.Fatalf("leases %v, want only %s's", leases, kept.IPs[0])
	}
	if sb, _ := m.Sandbox(lost.ID); sb.State != SandboxNotReady || !sb.NetworkDetached {
		t.Fatalf("the pod that lost its namespace: %s, detached %v", sb.State, sb.NetworkDetached)
	}
	if sb, _ := m.Sandbox(kept.ID); sb.State != SandboxReady || !netns.IsPinned(sb.NetNS) {
		t.Fatalf("the intact pod: %s", sb.State)
	}
	for _, id := range []string{kept.ID, lost.ID} {
		if err := m.RemoveSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

// A host port reaches the pod through the portmap plugin: a connection to
// the node's loopback on the host port lands on the container port inside
// the pod's namespace. Detaching the pod takes the rule away.
func TestHostPort(t *testing.T) {
	o := testNetwork(t)
	n, err := newPodNetwork(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns, err := netns.Create(o.NetNSDir, "hostport-pod")
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Remove(ns)
	probe, err := net.Listen("tcp", "127.0.0.1:0") // a free host port
	if err != nil {
		t.Fatal(err)
	}
	hostPort := probe.Addr().(*net.TCPAddr).Port
	probe.Close()
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "hostport", Namespace: "test", Uid: "hostport"},
		PortMappings: []*runtimeapi.PortMapping{{ContainerPort: 8080, HostPort: int32(hostPort), Protocol: runtimeapi.Protocol_TCP}},
	}
	if _, err := n.attach(ctx, "hostport-pod", ns, cfg); err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	if err := netns.Do(ns, func() (err error) { l, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go testcni.Answer(l, "through the host port")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(hostPort))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("the host port: %v", err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "through the host port" {
		t.Fatalf("read %q through the host port", b)
	}
	if err := n.detach(ctx, "hostport-pod", ns, cfg); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		b, _ := io.ReadAll(c)
		c.Close()
		if string(b) == "through the host port" {
			t.Fatal("the host port still reaches the pod after detach")
		}
	}
}

// With a pool, a pod takes a namespace attached ahead of need, under the
// pool's CNI ID, which its stop detaches; the pool fills up again; a pod
// with host ports gets an attachment of its own; Shutdown releases what
// the pool holds, and a crash's pool is reclaimed at the next start.
func TestNetworkPool(t *testing.T) {
	o := testNetwork(t)
	o.PoolSize = 2
	e := newEnv(t)
	m := e.managerWith(Options{Network: &o})
	ctx := context.Background()
	pooled := func() int {
		names, _ := netns.List(o.NetNSDir)
		n := 0
		for _, name := range names {
			if strings.HasPrefix(name, poolPrefix) {
				n++
			}
		}
		return n
	}
	leases := func() []string {
		l, _ := filepath.Glob(filepath.Join(o.IPAMDir, defaultNetworkName, "10.*"))
		return l
	}
	waitFor(t, "the pool filled", func() bool { m.netPool.mu.Lock(); defer m.netPool.mu.Unlock(); return len(m.netPool.ready) == 2 })

	sb, err := m.RunSandbox(ctx, podConfig("pooled", e.dir), "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sb.NetworkID, poolPrefix) || filepath.Base(sb.NetNS) != sb.NetworkID || len(sb.IPs) != 1 || !netns.IsPinned(sb.NetNS) {
		t.Fatalf("pod from the pool: %+v", sb)
	}
	waitFor(t, "the pool filled again", func() bool { m.netPool.mu.Lock(); defer m.netPool.mu.Unlock(); return len(m.netPool.ready) == 2 })

	cfg := podConfig("ports", e.dir)
	cfg.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 18080}}
	own, err := m.RunSandbox(ctx, cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	if own.NetworkID != "" || filepath.Base(own.NetNS) != own.ID {
		t.Fatalf("a pod with host ports took %q", own.NetworkID)
	}
	if got := len(leases()); got != 4 {
		t.Fatalf("%d leases for 2 pods and 2 pooled namespaces", got)
	}
	for _, id := range []string{sb.ID, own.ID} {
		if err := m.StopSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := m.RemoveSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(leases()); got != 2 || pooled() != 2 {
		t.Fatalf("after the pods went: %d leases, %d pooled namespaces", got, pooled())
	}

	// A crash leaves the pool's namespaces: the next start reclaims them
	// and fills a new pool; a clean shutdown releases it.
	stale, _ := netns.List(o.NetNSDir)
	m2 := e.managerWith(Options{Network: &o})
	for _, name := range stale {
		if _, err := os.Stat(filepath.Join(o.NetNSDir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the earlier pool's %s was not reclaimed", name)
		}
	}
	waitFor(t, "the new pool filled", func() bool { m2.netPool.mu.Lock(); defer m2.netPool.mu.Unlock(); return len(m2.netPool.ready) == 2 })
	m2.Shutdown()
	if names, _ := netns.List(o.NetNSDir); len(names) != 0 || len(leases()) != 0 {
		t.Fatalf("after shutdown: namespaces %v, leases %v", names, leases())
	}
}
