package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// hostname is the pod's hostname, as containers see it.
func hostname(sb *runtimeapi.PodSandboxConfig) string {
	if h := sb.GetHostname(); h != "" {
		return h
	}
	return sb.GetMetadata().GetName()
}

// devices are the harmless device nodes programs expect in /dev.
var devices = []struct {
	name         string
	major, minor uint32
}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}}

// seedLayer writes what every container's root gets into dir, a fresh
// empty directory the daemon has just made on the container's own tmpfs:
// /etc/hostname and /etc/resolv.conf from the pod's config (as containerd
// provides them), /etc/hosts (podHosts) and the device nodes of /dev. Nothing of the image or the
// module can be in dir yet, so plain system calls are safe here; over an
// image the overlay shows these instead of whatever the image has at the
// same paths, which is never written through.
func seedLayer(dir string, pod Sandbox) error {
	sb := pod.Config
	etc, dev := filepath.Join(dir, "etc"), filepath.Join(dir, "dev")
	for _, d := range []string{etc, dev} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("create container root: %w", err)
		}
	}
	for name, data := range map[string][]byte{"hostname": []byte(hostname(sb) + "\n"), "resolv.conf": resolvConf(sb.GetDnsConfig()), "hosts": podHosts(pod)} {
		if err := writeNew(filepath.Join(etc, name), data, 0o644); err != nil {
			return fmt.Errorf("create container root: %w", err)
		}
	}
	for _, n := range devices {
		p := filepath.Join(dev, n.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			if errors.Is(err, unix.EPERM) {
				continue // without CAP_MKNOD there are simply no device nodes
			}
			return fmt.Errorf("create container root: %w", err)
		}
		if err := unix.Chmod(p, 0o666); err != nil { // past the umask
			return fmt.Errorf("create container root: %w", err)
		}
	}
	return nil
}

// writeNew creates the file at p, which must not exist, with data and
// exactly mode.
func writeNew(p string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// podHosts is a pod's /etc/hosts: the node's for a pod on the node's
// network (as containerd gives it); otherwise the loopback names and the
// pod's own addresses under its hostname (as CRI-O writes it). kubelet
// mounts its own over it for the pods it runs.
func podHosts(pod Sandbox) []byte {
	if HostNetwork(pod.Config) {
		if b := nodeHosts.read(); b != nil {
			return b
		}
	}
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if !pod.NetworkDetached {
		for _, ip := range pod.IPs {
			b.WriteString(ip + "\t" + hostname(pod.Config) + "\n")
		}
	}
	return []byte(b.String())
}

// nodeHosts is the node's /etc/hosts.
var nodeHosts = &fileCache{path: "/etc/hosts"}

// resolvConf is the pod's DNS configuration, or the node's without one.
func resolvConf(dns *runtimeapi.DNSConfig) []byte {
	if dns == nil {
		return nodeResolv.read()
	}
	var b strings.Builder
	for _, s := range dns.GetServers() {
		b.WriteString("nameserver " + s + "\n")
	}
	if len(dns.GetSearches()) > 0 {
		b.WriteString("search " + strings.Join(dns.GetSearches(), " ") + "\n")
	}
	if len(dns.GetOptions()) > 0 {
		b.WriteString("options " + strings.Join(dns.GetOptions(), " ") + "\n")
	}
	return []byte(b.String())
}

// nodeResolv is the node's /etc/resolv.conf, read again only when it
// changes: a stat costs less than reading it for every container.
var nodeResolv = &fileCache{path: "/etc/resolv.conf"}

type fileCache struct {
	path string
	mu   sync.Mutex
	mod  time.Time
	size int64
	data []byte
}

// read returns the file's content, or nil when it cannot be read.
func (f *fileCache) read() []byte {
	fi, err := os.Stat(f.path)
	if err != nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.data != nil && fi.ModTime().Equal(f.mod) && fi.Size() == f.size {
		return f.data
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return nil
	}
	f.data, f.mod, f.size = b, fi.ModTime(), fi.Size()
	return b
}
