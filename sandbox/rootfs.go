package sandbox

import (
	"context"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/wasmcri/wasmcri/image"
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

// populateRoot gives a container of a compat image its own copy of the
// image's files, as a container runtime's writable layer over the image
// would: the module sees /etc and its data files, and what it writes stays
// its own. The module file itself is left out: it is the program, run from
// the compile cache, and copying megabytes of it would cost each container
// start milliseconds. An artifact holds only a module: its root starts
// empty.
func (m *Manager) populateRoot(ctx context.Context, img *image.Image, root string) error {
	if img.Format == image.FormatArtifact {
		return nil
	}
	fs, err := m.images.Filesystem(ctx, img)
	if err != nil {
		return err
	}
	module := filepath.Join(fs, filepath.Clean("/"+img.Module.Name))
	if err := copyTree(fs, root, module); err != nil {
		return fmt.Errorf("copy image %s into container root: %w", img.ID, err)
	}
	return nil
}

// copyTree copies the files, directories and symlinks under src to dst,
// never following a symlink, and leaving out the files named in skip.
func copyTree(src, dst string, skip ...string) error {
	return filepath.WalkDir(src, func(p string, d iofs.DirEntry, err error) error {
		if err != nil || slices.Contains(skip, p) {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, info.Mode().Perm())
		case d.Type()&iofs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			return copyFile(p, target, info.Mode().Perm())
		}
		return nil // unpacking makes no devices, FIFOs or sockets
	})
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
