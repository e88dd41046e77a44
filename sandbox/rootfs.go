package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/wasmcri/wasmcri/internal/inroot"
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

// prepareRoot makes a container's writable root: the working directory,
// /etc/hostname and /etc/resolv.conf from the pod's config (as containerd
// provides them), and the device nodes of /dev. Whatever the image put at
// those paths is replaced, never written through.
func prepareRoot(root *inroot.Root, workingDir string, sb *runtimeapi.PodSandboxConfig) error {
	if err := root.MkdirAll(workingDir, 0o755); err != nil {
		return fmt.Errorf("create container root: %w", err)
	}
	etc, err := root.Dir("/etc", true)
	if err != nil {
		return fmt.Errorf("create container root: %w", err)
	}
	defer etc.Close()
	if err := etc.WriteFile("hostname", []byte(hostname(sb)+"\n"), 0o644); err != nil {
		return err
	}
	if err := etc.WriteFile("resolv.conf", resolvConf(sb.GetDnsConfig()), 0o644); err != nil {
		return err
	}
	dev, err := root.Dir("/dev", true)
	if err != nil {
		return fmt.Errorf("create container root: %w", err)
	}
	defer dev.Close()
	for _, n := range devices {
		if err := dev.Mknod(n.name, 0o666, n.major, n.minor); err != nil && !errors.Is(err, syscall.EPERM) {
			// Without CAP_MKNOD there are simply no device nodes.
			return err
		}
	}
	return nil
}

// resolvConf is the pod's DNS configuration, or the node's without one.
func resolvConf(dns *runtimeapi.DNSConfig) []byte {
	if dns == nil {
		if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
			return b
		}
		return nil
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
