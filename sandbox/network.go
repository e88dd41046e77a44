package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	gocni "github.com/containerd/go-cni"
	"github.com/wasmcri/wasmcri/internal/netns"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// NetworkOptions say where pods' networks come from: CNI plugins and
// configuration as containerd's bin_dir and conf_dir, and, when the node
// has no configuration, a network of wasmcri's own.
type NetworkOptions struct {
	// PluginDirs are searched in order for CNI plugin programs.
	PluginDirs []string
	// ConfDir holds the node's CNI configuration; its first file (by
	// name) is the pods' network, as with containerd.
	ConfDir string
	// NetNSDir holds the pods' network namespaces, each a file named by
	// the CNI container ID it was attached under: its sandbox's ID, or a
	// pooled one's (network_pool.go).
	NetNSDir string
	// The built-in network, used while ConfDir holds no configuration:
	// a bridge (DefaultBridge) with host-local addresses from
	// DefaultSubnet, leases kept in IPAMDir, and portmap for host ports.
	DefaultBridge, DefaultSubnet, IPAMDir string
	// PoolSize namespaces are kept attached to the built-in network ahead
	// of need (network_pool.go); 0 attaches each pod as it starts.
	PoolSize int
}

// defaultNetworkName is the built-in network's CNI name.
const defaultNetworkName = "wasmcri"

// podNetwork is the pods' CNI network: it loads the configuration and
// runs the plugins' ADD and DEL for a namespace.
type podNetwork struct {
	opts NetworkOptions
	cni  gocni.CNI
	// builtIn is whether the pods' network is wasmcri's own, as no
	// configuration was found in ConfDir when it was last loaded.
	mu      sync.Mutex
	builtIn bool
}

func newPodNetwork(o NetworkOptions) (*podNetwork, error) {
	if _, _, err := net.ParseCIDR(o.DefaultSubnet); err != nil {
		return nil, fmt.Errorf("network default_subnet %q: %w", o.DefaultSubnet, err)
	}
	cni, err := gocni.New(gocni.WithPluginDir(o.PluginDirs), gocni.WithPluginConfDir(o.ConfDir),
		gocni.WithInterfacePrefix("eth"), gocni.WithMinNetworkCount(2))
	if err != nil {
		return nil, err
	}
	n := &podNetwork{opts: o, cni: cni}
	if err := n.load(); err != nil {
		return nil, err
	}
	return n, nil
}

// load reads the node's configuration again, or falls back on the
// built-in network.
func (n *podNetwork) load() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	err := n.cni.Load(gocni.WithLoNetwork, gocni.WithDefaultConf)
	if err == nil {
		n.builtIn = false
		return nil
	}
	if !errors.Is(err, gocni.ErrCNINotInitialized) && !strings.Contains(err.Error(), "no network config found") {
		return fmt.Errorf("CNI configuration in %s: %w", n.opts.ConfDir, err)
	}
	conf, err := builtInNetwork(n.opts)
	if err != nil {
		return err
	}
	// First, so that go-cni names its interface eth0 (by its index).
	if err := n.cni.Load(gocni.WithConfListBytes(conf), gocni.WithLoNetwork); err != nil {
		return fmt.Errorf("the built-in network: %w", err)
	}
	n.builtIn = true
	return nil
}

// isBuiltIn says whether pods join the built-in network.
func (n *podNetwork) isBuiltIn() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.builtIn
}

// builtInNetwork is the CNI configuration of wasmcri's own network: a
// bridge the node routes to, addresses leased from one subnet, host ports
// through portmap. No masquerading rule is added: what pods may reach
// beyond the node is the node's routing policy.
func builtInNetwork(o NetworkOptions) ([]byte, error) {
	type obj = map[string]any
	conf := obj{
		"cniVersion": "1.0.0",
		"name":       defaultNetworkName,
		"plugins": []obj{
			{
				"type": "bridge", "bridge": o.DefaultBridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
				"ipam": obj{
					"type":    "host-local",
					"ranges":  [][]obj{{{"subnet": o.DefaultSubnet}}},
					"routes":  []obj{{"dst": "0.0.0.0/0"}},
					"dataDir": o.IPAMDir,
				},
			},
			{"type": "portmap", "capabilities": obj{"portMappings": true}},
		},
	}
	return json.Marshal(conf)
}

// status is nil when pods can be attached, or says why not. While the
// built-in network stands in, a configuration the node has since
// installed (a network add-on writing ConfDir) is taken up.
func (n *podNetwork) status() error {
	n.mu.Lock()
	reload := n.builtIn && hasCNIConfig(n.opts.ConfDir)
	n.mu.Unlock()
	if reload {
		if err := n.load(); err != nil {
			return err
		}
	}
	if err := n.cni.Status(); err != nil {
		return err
	}
	// The programs every pod runs: the loopback's, and the built-in
	// network's (a node's own configuration names its own).
	needed := []string{"loopback"}
	n.mu.Lock()
	if n.builtIn {
		needed = append(needed, builtInPlugins...)
	}
	n.mu.Unlock()
	for _, p := range needed {
		if !n.hasPlugin(p) {
			return fmt.Errorf("no CNI plugin %q in %s", p, strings.Join(n.opts.PluginDirs, ", "))
		}
	}
	return nil
}

// builtInPlugins are the plugins the built-in network runs.
var builtInPlugins = []string{"bridge", "host-local", "portmap"}

func (n *podNetwork) hasPlugin(name string) bool {
	for _, dir := range n.opts.PluginDirs {
		if st, err := os.Stat(filepath.Join(dir, name)); err == nil && st.Mode().IsRegular() {
			return true
		}
	}
	return false
}

// hasCNIConfig says whether dir holds a CNI configuration file.
func hasCNIConfig(dir string) bool {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			return true
		}
	}
	return false
}

// attach runs CNI ADD for pod id in the namespace at netns, with the
// pod's host ports, and returns its addresses, IPv4 first.
func (n *podNetwork) attach(ctx context.Context, id, netns string, cfg *runtimeapi.PodSandboxConfig) ([]string, error) {
	res, err := n.cni.Setup(ctx, id, netns, n.namespaceOpts(id, cfg)...)
	if err != nil {
		return nil, err
	}
	var v4, v6 []string
	if eth, ok := res.Interfaces["eth0"]; ok {
		for _, c := range eth.IPConfigs {
			if c.IP.To4() != nil {
				v4 = append(v4, c.IP.String())
			} else {
				v6 = append(v6, c.IP.String())
			}
		}
	}
	if len(v4)+len(v6) == 0 {
		return nil, fmt.Errorf("the CNI network gave pod %s no address", id)
	}
	return append(v4, v6...), nil
}

// detach runs CNI DEL for pod id; plugins make it idempotent.
func (n *podNetwork) detach(ctx context.Context, id, netns string, cfg *runtimeapi.PodSandboxConfig) error {
	return n.cni.Remove(ctx, id, netns, n.namespaceOpts(id, cfg)...)
}

// namespaceOpts are the CNI arguments of pod id, as containerd passes
// them: the Kubernetes names and the pod's host ports.
func (n *podNetwork) namespaceOpts(id string, cfg *runtimeapi.PodSandboxConfig) []gocni.NamespaceOpts {
	md := cfg.GetMetadata()
	opts := []gocni.NamespaceOpts{gocni.WithLabels(map[string]string{
		"K8S_POD_NAMESPACE":          md.GetNamespace(),
		"K8S_POD_NAME":               md.GetName(),
		"K8S_POD_INFRA_CONTAINER_ID": id,
		"K8S_POD_UID":                md.GetUid(),
		"IgnoreUnknown":              "1",
	})}
	var ports []gocni.PortMapping
	for _, p := range cfg.GetPortMappings() {
		if p.GetHostPort() <= 0 {
			continue
		}
		ports = append(ports, gocni.PortMapping{HostPort: p.GetHostPort(), ContainerPort: p.GetContainerPort(),
			Protocol: strings.ToLower(p.GetProtocol().String()), HostIP: p.GetHostIp()})
	}
	if len(ports) > 0 {
		opts = append(opts, gocni.WithCapabilityPortMap(ports))
	}
	return opts
}

// networkTimeout bounds the plugins' work for a pod when no caller's
// deadline does (start-up, cleanups).
const networkTimeout = time.Minute

// NetworkStatus is nil when pods can join the pod network, or says why
// not (RuntimeStatus's NetworkReady). Without pod networking configured
// (Options.Network nil) every pod is on the node's network: ready.
func (m *Manager) NetworkStatus() error {
	if m.network == nil {
		return nil
	}
	return m.network.status()
}

// attachNetwork makes sandbox sb's network namespace and attaches it to
// the pod network, recording both in sb; on failure nothing is left.
// Without pod networking configured the pod stays on the node's network.
func (m *Manager) attachNetwork(ctx context.Context, sb *sandboxEntry) error {
	if m.network == nil {
		return nil
	}
	if err := m.network.status(); err != nil {
		return fmt.Errorf("the pod network is not ready: %v: %w", err, errdefs.ErrFailedPrecondition)
	}
	if got, ok := m.netPool.take(sb.Config); ok {
		sb.NetNS, sb.IPs, sb.NetworkID = got.netns, got.ips, got.id
		return nil
	}
	ns, err := netns.Create(m.network.opts.NetNSDir, sb.ID)
	if err != nil {
		return fmt.Errorf("create the network namespace of sandbox %s: %w", sb.ID, err)
	}
	ips, err := m.network.attach(ctx, sb.ID, ns, sb.Config)
	if err != nil {
		// What the plugins did before failing is undone by their DEL.
		m.releaseNetwork(Sandbox{ID: sb.ID, Config: sb.Config, NetNS: ns})
		return fmt.Errorf("attach sandbox %s to the pod network: %w", sb.ID, err)
	}
	sb.NetNS, sb.IPs = ns, ips
	return nil
}

// detachNetwork takes sandbox sb off the pod network (CNI DEL), once.
func (m *Manager) detachNetwork(ctx context.Context, sb *sandboxEntry) error {
	sb.mu.Lock()
	s := sb.Sandbox
	sb.mu.Unlock()
	if s.NetNS == "" || s.NetworkDetached {
		return nil
	}
	if m.network != nil {
		if err := m.network.detach(ctx, s.cniID(), s.NetNS, s.Config); err != nil {
			return fmt.Errorf("take sandbox %s off the pod network: %w", s.ID, err)
		}
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return m.updateSandboxLocked(sb, func(next *Sandbox) { next.NetworkDetached = true })
}

// releaseNetwork detaches sandbox s if it still is attached and removes
// its namespace; failures are logged, and what remains is reclaimed at
// the next start-up.
func (m *Manager) releaseNetwork(s Sandbox) {
	if s.NetNS == "" {
		return
	}
	if !s.NetworkDetached && m.network != nil {
		ctx, cancel := context.WithTimeout(context.Background(), networkTimeout)
		err := m.network.detach(ctx, s.cniID(), s.NetNS, s.Config)
		cancel()
		if err != nil {
			m.log.Warn("sandbox not taken off the pod network", "sandbox", s.ID, "error", err)
		}
	}
	if err := netns.Remove(s.NetNS); err != nil {
		m.log.Warn("network namespace not removed", "sandbox", s.ID, "netns", s.NetNS, "error", err)
	}
}

// reclaimNetworks runs at start-up. A namespace no sandbox records was
// left by a crash between its creation and the record (or between a
// record's removal and the namespace's): it is detached and removed. A
// recorded namespace that is gone (the machine restarted) leaves its
// sandbox not ready and detached, for kubelet to make a new one.
func (m *Manager) reclaimNetworks() {
	if m.network == nil {
		return
	}
	dir := m.network.opts.NetNSDir
	recorded := map[string]bool{}
	for _, sb := range m.sandboxes.all() {
		if sb.NetNS == "" {
			continue
		}
		recorded[filepath.Base(sb.NetNS)] = true
		if sb.NetworkDetached || netns.IsPinned(sb.NetNS) {
			continue
		}
		// DEL still frees what the plugins hold for it (its lease), with
		// the namespace gone.
		ctx, cancel := context.WithTimeout(context.Background(), networkTimeout)
		if err := m.network.detach(ctx, sb.cniID(), sb.NetNS, sb.Config); err != nil {
			m.log.Warn("sandbox not taken off the pod network", "sandbox", sb.ID, "error", err)
		}
		cancel()
		sb.mu.Lock()
		err := m.updateSandboxLocked(sb, func(next *Sandbox) { next.State, next.NetworkDetached = SandboxNotReady, true })
		sb.mu.Unlock()
		m.log.Warn("sandbox lost its network namespace (the node restarted?): marked not ready", "sandbox", sb.ID, "netns", sb.NetNS, "error", err)
	}
	names, err := netns.List(dir)
	if err != nil {
		m.log.Warn("network namespaces not listed", "dir", dir, "error", err)
	}
	for _, name := range names {
		if recorded[name] {
			continue
		}
		// Named by the CNI container ID it was attached under: its
		// sandbox's ID, or a pooled one's.
		m.releaseNetwork(Sandbox{ID: name, Config: &runtimeapi.PodSandboxConfig{}, NetNS: filepath.Join(dir, name)})
		m.log.Info("reclaimed a network namespace of an earlier run", "netns", filepath.Join(dir, name))
	}
}
