package sandbox

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/wasmcri/wasmcri/image"
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

// populateRoot gives a container of a compat image its own copy of the
// image's files, as a container runtime's writable layer over the image
// would: the module sees /etc and its data files, and what it writes stays
// its own. The module file itself is left out: it is the program, run from
// the compile cache, and copying megabytes of it would cost each container
// start milliseconds. An artifact holds only a module: its root starts
// empty.
func (m *Manager) populateRoot(ctx context.Context, img *image.Image, root *inroot.Root) error {
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

// copyTree copies the files, directories and symlinks under src into dst,
// never following a symlink on either side, and leaving out skip. The
// image's symlinks are copied as they are: they are resolved later only by
// the module's own WASI calls, inside its root, or by inroot. Each
// directory of dst is opened once for all its entries.
func copyTree(src string, dst *inroot.Root, skip string) error {
	dirs := map[string]*inroot.Dir{}
	defer func() {
		for _, d := range dirs {
			d.Close()
		}
	}()
	dirOf := func(rel string) (*inroot.Dir, string, error) {
		parent, name := filepath.Split(rel)
		if d, ok := dirs[parent]; ok {
			return d, name, nil
		}
		d, err := dst.Dir(parent, true)
		if err != nil {
			return nil, "", err
		}
		dirs[parent] = d
		return d, name, nil
	}
	return filepath.WalkDir(src, func(p string, e iofs.DirEntry, err error) error {
		if err != nil || p == skip || p == src {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		if e.IsDir() {
			return dst.MkdirAll(rel, info.Mode().Perm())
		}
		d, name, err := dirOf(rel)
		if err != nil {
			return err
		}
		switch {
		case e.Type()&iofs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return d.Symlink(link, name)
		case e.Type().IsRegular():
			f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			return d.CopyFrom(f, name, info.Mode().Perm())
		}
		return nil // unpacking makes no devices, FIFOs or sockets
	})
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
