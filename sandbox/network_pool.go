package sandbox

import (
	"context"
	"log/slog"
	"sync"

	"github.com/wasmcri/wasmcri/internal/netns"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// netPool keeps a few namespaces attached to the built-in network ahead of
// need: running the plugins (CNI ADD) costs a pod start tens of ms, taking
// a ready namespace costs nothing. Only pods the built-in network gives
// nothing pod-specific take one: no host ports (portmap needs them at ADD)
// and no node CNI configuration (whose plugins may look the pod up by the
// names ADD passes). A pooled namespace keeps the CNI container ID it was
// attached under (Sandbox.NetworkID), which its DEL uses.
type netPool struct {
	n    *podNetwork
	size int
	log  *slog.Logger

	mu      sync.Mutex
	ready   []pooledNetwork
	filling int
	closed  bool
	// failed stops refilling after a failed ADD until the next take, so a
	// broken network does not spin.
	failed bool
	wg     sync.WaitGroup
}

type pooledNetwork struct {
	id, netns string
	ips       []string
}

// poolPrefix starts pooled namespaces' names (and CNI container IDs):
// never a sandbox ID, which is hex.
const poolPrefix = "pool-"

func newNetPool(n *podNetwork, size int, log *slog.Logger) *netPool {
	p := &netPool{n: n, size: size, log: log}
	p.refill()
	return p
}

// take returns an attached namespace for pod cfg, or false when none is
// ready or cfg needs an attachment of its own; either way the pool fills
// up again in the background.
func (p *netPool) take(cfg *runtimeapi.PodSandboxConfig) (pooledNetwork, bool) {
	if p == nil || !p.n.isBuiltIn() {
		return pooledNetwork{}, false
	}
	for _, pm := range cfg.GetPortMappings() {
		if pm.GetHostPort() > 0 {
			return pooledNetwork{}, false
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failed = false
	defer p.refillLocked()
	if len(p.ready) == 0 {
		return pooledNetwork{}, false
	}
	got := p.ready[len(p.ready)-1]
	p.ready = p.ready[:len(p.ready)-1]
	return got, true
}

func (p *netPool) refill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refillLocked()
}

func (p *netPool) refillLocked() {
	for !p.closed && !p.failed && len(p.ready)+p.filling < p.size {
		p.filling++
		p.wg.Add(1)
		go p.attachOne()
	}
}

func (p *netPool) attachOne() {
	defer p.wg.Done()
	got, err := p.attach(poolPrefix + newID()[:32])
	p.mu.Lock()
	p.filling--
	closed := p.closed
	switch {
	case err != nil:
		p.failed = true
	case !closed:
		p.ready = append(p.ready, got)
	}
	p.mu.Unlock()
	if err != nil {
		p.log.Warn("pod network namespace not attached ahead of need", "error", err)
	} else if closed {
		p.release(got)
	}
}

func (p *netPool) attach(id string) (pooledNetwork, error) {
	ns, err := netns.Create(p.n.opts.NetNSDir, id)
	if err != nil {
		return pooledNetwork{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), networkTimeout)
	defer cancel()
	ips, err := p.n.attach(ctx, id, ns, &runtimeapi.PodSandboxConfig{})
	if err != nil {
		p.release(pooledNetwork{id: id, netns: ns})
		return pooledNetwork{}, err
	}
	return pooledNetwork{id: id, netns: ns, ips: ips}, nil
}

// release detaches and removes a pooled namespace.
func (p *netPool) release(got pooledNetwork) {
	ctx, cancel := context.WithTimeout(context.Background(), networkTimeout)
	defer cancel()
	if err := p.n.detach(ctx, got.id, got.netns, &runtimeapi.PodSandboxConfig{}); err != nil {
		p.log.Warn("pooled network namespace not detached", "netns", got.netns, "error", err)
	}
	if err := netns.Remove(got.netns); err != nil {
		p.log.Warn("pooled network namespace not removed", "netns", got.netns, "error", err)
	}
}

// close stops refilling and releases what is ready, once the attachments
// under way end.
func (p *netPool) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	p.wg.Wait()
	for _, got := range ready {
		p.release(got)
	}
}
