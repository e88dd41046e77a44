package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

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

// prepareRoot makes a container's writable root: the working directory,
// /etc/hostname and /etc/resolv.conf from the pod's config (as containerd
// provides them), and the harmless device nodes programs expect in /dev.
func prepareRoot(root, workingDir string, sb *runtimeapi.PodSandboxConfig) error {
	for _, dir := range []string{inRoot(root, workingDir), filepath.Join(root, "etc"), filepath.Join(root, "dev")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create container root: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte(hostname(sb)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "resolv.conf"), resolvConf(sb.GetDnsConfig()), 0o644); err != nil {
		return err
	}
	for _, d := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}} {
		// Without CAP_MKNOD there are simply no device nodes.
		unix.Mknod(filepath.Join(root, "dev", d.name), unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor)))
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
