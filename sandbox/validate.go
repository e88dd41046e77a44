package sandbox

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRI input is checked before anything is made of it, and refused with
// InvalidArgument naming the field. What each check prevents:
//
//   - a NUL byte cuts a string short where it reaches C (wasmtime's WASI
//     setup, system calls), so the module or the file system would see
//     something else than the config says;
//   - an env entry that is not valid UTF-8 is dropped by wasmtime, with
//     every entry after it (PWD and HOSTNAME too), silently;
//   - a '/' in a name lets two pods or containers reserve the same name
//     ("a/b" + "c" and "a" + "b/c");
//   - a log path must stay inside the pod's log directory: the daemon
//     writes it as root.

func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

// plain refuses a NUL byte in field's value.
func plain(field, v string) error {
	if strings.IndexByte(v, 0) >= 0 {
		return invalid("%s %q contains a NUL byte", field, v)
	}
	return nil
}

// name refuses an empty name, a NUL or a '/' in field.
func name(field, v string, required bool) error {
	if v == "" && required {
		return invalid("%s is empty", field)
	}
	if strings.ContainsAny(v, "/\x00") {
		return invalid("%s %q must not contain '/' or a NUL byte", field, v)
	}
	return nil
}

func validateSandboxConfig(cfg *runtimeapi.PodSandboxConfig) error {
	md := cfg.GetMetadata()
	if md == nil {
		return invalid("sandbox config has no metadata")
	}
	if err := name("metadata.name", md.GetName(), true); err != nil {
		return err
	}
	if err := name("metadata.namespace", md.GetNamespace(), false); err != nil {
		return err
	}
	if err := name("metadata.uid", md.GetUid(), false); err != nil {
		return err
	}
	// The three reach the CNI plugins as CNI_ARGS ("K=V;K=V"), where a
	// separator would add arguments of the pod's choosing (host-local's
	// IP=, for one). Kubernetes names and UIDs never hold them.
	for field, v := range map[string]string{"metadata.name": md.GetName(), "metadata.namespace": md.GetNamespace(), "metadata.uid": md.GetUid()} {
		if strings.ContainsAny(v, ";=") {
			return invalid("%s %q must not contain ';' or '=' (it is passed to the CNI plugins)", field, v)
		}
	}
	if dir := cfg.GetLogDirectory(); dir != "" {
		if err := plain("log_directory", dir); err != nil {
			return err
		}
		if !filepath.IsAbs(dir) {
			return invalid("log_directory %q is not an absolute path", dir)
		}
	}
	if err := name("hostname", cfg.GetHostname(), false); err != nil {
		return err
	}
	dns := cfg.GetDnsConfig()
	for field, values := range map[string][]string{"dns_config.servers": dns.GetServers(), "dns_config.searches": dns.GetSearches(), "dns_config.options": dns.GetOptions()} {
		for i, v := range values {
			if strings.ContainsAny(v, "\x00\n") {
				return invalid("%s[%d] %q contains a NUL byte or a newline", field, i, v)
			}
		}
	}
	// Host ports reach the CNI portmap plugin as its arguments.
	for i, p := range cfg.GetPortMappings() {
		if p.GetContainerPort() < 0 || p.GetContainerPort() > 65535 || p.GetHostPort() < 0 || p.GetHostPort() > 65535 {
			return invalid("port_mappings[%d]: ports %d (container) and %d (host) are not all in 0-65535", i, p.GetContainerPort(), p.GetHostPort())
		}
		if p.GetHostPort() > 0 && p.GetContainerPort() == 0 {
			return invalid("port_mappings[%d]: host port %d maps to no container port", i, p.GetHostPort())
		}
		if ip := p.GetHostIp(); ip != "" && net.ParseIP(ip) == nil {
			return invalid("port_mappings[%d].host_ip %q is not an IP address", i, ip)
		}
		if _, ok := runtimeapi.Protocol_name[int32(p.GetProtocol())]; !ok {
			return invalid("port_mappings[%d].protocol %d is not TCP, UDP or SCTP", i, p.GetProtocol())
		}
	}
	return nil
}

func validateContainerConfig(cfg *runtimeapi.ContainerConfig) error {
	if err := name("metadata.name", cfg.GetMetadata().GetName(), true); err != nil {
		return err
	}
	if cfg.GetImage().GetImage() == "" {
		return invalid("image.image is empty: the container config names no image")
	}
	if err := plain("image.image", cfg.GetImage().GetImage()); err != nil {
		return err
	}
	if err := validateArgs("command", cfg.GetCommand()); err != nil {
		return err
	}
	if err := validateArgs("args", cfg.GetArgs()); err != nil {
		return err
	}
	for i, kv := range cfg.GetEnvs() {
		k, v := kv.GetKey(), string(kv.GetValue())
		field := fmt.Sprintf("envs[%d]", i)
		switch {
		case k == "" || strings.ContainsAny(k, "=\x00") || !utf8.ValidString(k):
			return invalid("%s key %q must be non-empty UTF-8 without '=' or NUL", field, k)
		case strings.IndexByte(v, 0) >= 0:
			return invalid("%s (%s) value contains a NUL byte", field, k)
		case !utf8.ValidString(v):
			return invalid("%s (%s) value is not valid UTF-8", field, k)
		}
	}
	if err := plain("working_dir", cfg.GetWorkingDir()); err != nil {
		return err
	}
	for i, m := range cfg.GetMounts() {
		for field, v := range map[string]string{"container_path": m.GetContainerPath(), "host_path": m.GetHostPath(), "image_sub_path": m.GetImageSubPath()} {
			if err := plain(fmt.Sprintf("mounts[%d].%s", i, field), v); err != nil {
				return err
			}
		}
	}
	if lp := cfg.GetLogPath(); lp != "" {
		if err := plain("log_path", lp); err != nil {
			return err
		}
		if !filepath.IsLocal(lp) {
			return invalid("log_path %q must be a relative path inside the pod's log directory", lp)
		}
	}
	sc := cfg.GetLinux().GetSecurityContext()
	for field, paths := range map[string][]string{"masked_paths": sc.GetMaskedPaths(), "readonly_paths": sc.GetReadonlyPaths()} {
		for i, p := range paths {
			if err := plain(fmt.Sprintf("linux.security_context.%s[%d]", field, i), p); err != nil {
				return err
			}
		}
	}
	if sc.GetRunAsGroup() != nil && sc.GetRunAsUser() == nil && sc.GetRunAsUsername() == "" {
		return invalid("linux.security_context.run_as_group is set without run_as_user or run_as_username")
	}
	return nil
}

// validateArgs refuses argv entries that WASI cannot pass on intact.
func validateArgs(field string, argv []string) error {
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return invalid("%s[%d] %q contains a NUL byte", field, i, a)
		}
		if !utf8.ValidString(a) {
			return invalid("%s[%d] %q is not valid UTF-8", field, i, a)
		}
	}
	return nil
}

// validateCommand checks an exec's command line.
func validateCommand(field string, cmd []string) error {
	if len(cmd) == 0 {
		return invalid("exec: empty %s", field)
	}
	return validateArgs(field, cmd)
}
