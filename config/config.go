// Package config loads, defaults and validates the wasmcri TOML configuration.
//
// The file has the feel of containerd's: top-level root/state directories,
// then one table per concern. Unknown keys are an error naming the key, so a
// typo never silently falls back to a default.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Version is the configuration schema version this build reads.
const Version = 1

// Defaults a node gets without any config file.
const (
	DefaultRoot           = "/var/lib/wasmcri"
	DefaultState          = "/run/wasmcri"
	DefaultAddress        = "/run/wasmcri/wasmcri.sock"
	DefaultRuntimeHandler = "wasmtime"
)

// Config is the whole daemon configuration.
type Config struct {
	Version int `toml:"version"`
	// Root holds what must survive a reboot: images, compiled modules,
	// metadata, container writable directories.
	Root string `toml:"root"`
	// State holds what lives only while the daemon runs: by default the
	// CRI socket, and the admin socket beside it.
	State    string         `toml:"state"`
	GRPC     GRPCConfig     `toml:"grpc"`
	Stream   StreamConfig   `toml:"stream"`
	Log      LogConfig      `toml:"log"`
	Runtime  RuntimeConfig  `toml:"runtime"`
	Image    ImageConfig    `toml:"image"`
	Registry RegistryConfig `toml:"registry"`
	Network  NetworkConfig  `toml:"network"`
	Admin    AdminConfig    `toml:"admin"`
	Debug    DebugConfig    `toml:"debug"`
}

// NetworkConfig configures pod networking: each pod not on the node's
// network gets a network namespace attached through CNI, as containerd's
// CNI bin_dir and conf_dir do it.
type NetworkConfig struct {
	// CNIBinDirs are searched in order for plugin programs (Debian's
	// containernetworking-plugins installs them in /usr/lib/cni).
	CNIBinDirs []string `toml:"cni_bin_dirs"`
	// CNIConfDir holds the node's CNI configuration; its first file by
	// name is the pods' network.
	CNIConfDir string `toml:"cni_conf_dir"`
	// While CNIConfDir holds no configuration, pods join wasmcri's own
	// network: bridge DefaultBridge, addresses from DefaultSubnet (IPv4),
	// host ports through portmap.
	DefaultBridge string `toml:"default_bridge"`
	DefaultSubnet string `toml:"default_subnet"`
	// PoolSize namespaces are kept attached to the built-in network ahead
	// of need, so that a pod start does not wait for the plugins; 0 runs
	// them for each pod as it starts.
	PoolSize int `toml:"pool_size"`
}

// AdminConfig configures the node-local socket `wasmcri image import` and
// other administration commands use (root only; not part of CRI).
type AdminConfig struct {
	// Address is a unix socket path; "" puts it beside the CRI socket.
	Address string `toml:"address"`
}

// DebugConfig configures diagnostics.
type DebugConfig struct {
	// PprofAddress, when set, serves Go's net/http/pprof on this unix
	// socket, root-only (mode 0600). A TCP port is refused: every local
	// user could read the daemon's memory profile through it.
	PprofAddress string `toml:"pprof_address"`
}

// GRPCConfig configures the CRI socket.
type GRPCConfig struct {
	// Address is the unix socket path; "unix://" is accepted as a prefix.
	Address            string `toml:"address"`
	MaxRecvMessageSize int    `toml:"max_recv_message_size"`
	MaxSendMessageSize int    `toml:"max_send_message_size"`
}

// StreamConfig configures the HTTP server that carries exec, attach and
// port-forward streams (kubelet connects to it and proxies them).
type StreamConfig struct {
	// Address and Port to listen on; port "0" picks a free one.
	Address string `toml:"address"`
	Port    string `toml:"port"`
	// IdleTimeout closes a stream with no traffic for this long.
	IdleTimeout Duration `toml:"idle_timeout"`
}

// LogConfig configures the daemon's own log (not container logs).
type LogConfig struct {
	Level  string `toml:"level"`  // debug, info, warn, error
	Format string `toml:"format"` // text, json
}

// RuntimeConfig configures how modules run.
type RuntimeConfig struct {
	// Handlers are the RuntimeClass handler names this runtime answers to;
	// an empty runtime_handler in RunPodSandbox means the first one.
	Handlers []string `toml:"handlers"`
	// MaxWasmStack bounds each instance's wasm stack, in bytes.
	MaxWasmStack int `toml:"max_wasm_stack"`
	// CgroupDriver is what RuntimeConfig tells kubelet: "cgroupfs" or
	// "systemd". wasmcri keeps its own cgroups under the daemon's.
	CgroupDriver string `toml:"cgroup_driver"`
	// DefaultMemoryLimit bounds, in bytes, all the memories and tables of
	// a container whose config sets no memory limit. Every instance lives
	// in the daemon, so an unbounded one could get the daemon (and every
	// pod) OOM-killed; 0 leaves such containers unbounded.
	DefaultMemoryLimit int64 `toml:"default_memory_limit"`
	// CompileTimeout bounds one module's compilation (in a child process,
	// killed past it), as a Go duration.
	CompileTimeout Duration `toml:"compile_timeout"`
	// CompileMemoryLimit bounds, in bytes, the memory one compilation may
	// take (the compiler process's data size rlimit).
	CompileMemoryLimit int64 `toml:"compile_memory_limit"`
	// WritableLayerSize and WritableLayerInodes bound each container's
	// writable layer: a tmpfs under the state directory, so what modules
	// write there counts in the node's memory, as an emptyDir of medium
	// Memory does. Data to keep belongs in volumes.
	WritableLayerSize   int64 `toml:"writable_layer_size"`
	WritableLayerInodes int64 `toml:"writable_layer_inodes"`
}

// ImageConfig configures pulling and storing images.
type ImageConfig struct {
	// MaxLayerSize refuses any blob (compressed layer or extracted module)
	// larger than this many bytes before it is stored.
	MaxLayerSize int64 `toml:"max_layer_size"`
	// PullTimeout bounds one PullImage call, unpacking included, as a Go
	// duration ("5m").
	PullTimeout Duration `toml:"pull_timeout"`
	// MaxModuleSize refuses larger WebAssembly modules, at pull and
	// before compiling.
	MaxModuleSize int64 `toml:"max_module_size"`
	// MaxUnpackedSize refuses a compat image whose layers unpack to more
	// bytes than this (a small gzip layer can hold gigabytes).
	MaxUnpackedSize int64 `toml:"max_unpacked_size"`
	// MaxUnpackedEntries refuses a compat image whose layers hold more
	// entries (files, directories, links, whiteouts) than this.
	MaxUnpackedEntries int64 `toml:"max_unpacked_entries"`
}

// RegistryConfig configures registry access.
type RegistryConfig struct {
	// PlainHTTP lists registry hosts ("host" or "host:port") reached over
	// plain HTTP. Loopback registries always fall back to HTTP.
	PlainHTTP []string `toml:"plain_http"`
	// ConfigPath is a directory of per-host hosts.toml files, laid out as
	// containerd's config_path (<dir>/<host>/hosts.toml).
	ConfigPath string `toml:"config_path"`
	// DockerConfig is a docker config.json whose credentials serve pulls
	// that bring none (kubelet passes pull secrets itself).
	DockerConfig string `toml:"docker_config"`
}

// Default returns the configuration used when no file is given.
func Default() *Config {
	return &Config{
		Version: Version,
		Root:    DefaultRoot,
		State:   DefaultState,
		GRPC: GRPCConfig{
			Address:            DefaultAddress,
			MaxRecvMessageSize: 16 << 20,
			MaxSendMessageSize: 16 << 20,
		},
		Stream: StreamConfig{Address: "127.0.0.1", Port: "0", IdleTimeout: Duration{4 * time.Hour}},
		Log:    LogConfig{Level: "info", Format: "text"},
		Runtime: RuntimeConfig{
			Handlers: []string{DefaultRuntimeHandler}, MaxWasmStack: 1 << 20, CgroupDriver: "cgroupfs",
			DefaultMemoryLimit: 4 << 30, CompileTimeout: Duration{2 * time.Minute}, CompileMemoryLimit: 2 << 30,
			WritableLayerSize: 256 << 20, WritableLayerInodes: 16384,
		},
		Image: ImageConfig{
			MaxLayerSize:       512 << 20,
			PullTimeout:        Duration{10 * time.Minute},
			MaxModuleSize:      128 << 20,
			MaxUnpackedSize:    1 << 30,
			MaxUnpackedEntries: 100_000,
		},
		Registry: RegistryConfig{PlainHTTP: []string{}},
		Network: NetworkConfig{
			CNIBinDirs: []string{"/usr/lib/cni", "/opt/cni/bin"}, CNIConfDir: "/etc/cni/net.d",
			// Not 10.88/16 (containerd's and podman's examples) nor inside
			// 10.96/12 (Kubernetes' default service range).
			DefaultBridge: "wasmcri0", DefaultSubnet: "10.89.0.0/16", PoolSize: 4,
		},
	}
}

// Load reads the file at path over the defaults and validates the result.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(b)
}

// Parse decodes TOML text over the defaults and validates the result.
func Parse(b []byte) (*Config, error) {
	cfg := Default()
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(cfg)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			// Not ErrorWithPosition: it panics on some malformed files
			// (a fuzzed input, kept in testdata/fuzz/FuzzParse).
			key := ""
			if perr.LastKey != "" {
				key = " (key " + perr.LastKey + ")"
			}
			return nil, fmt.Errorf("config: line %d, column %d%s: %s", perr.Position.Line, perr.Position.Col, key, perr.Message)
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("config: unknown key %s", strings.Join(keys, ", "))
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Validate checks every value and names the offending key.
func (c *Config) Validate() error {
	bad := func(key string, format string, args ...any) error {
		return fmt.Errorf("config: invalid %s: %s", key, fmt.Sprintf(format, args...))
	}
	if c.Version != Version {
		return bad("version", "%d (this build reads version %d)", c.Version, Version)
	}
	if !filepath.IsAbs(c.Root) {
		return bad("root", "%q is not an absolute path", c.Root)
	}
	if !filepath.IsAbs(c.State) {
		return bad("state", "%q is not an absolute path", c.State)
	}
	addr, err := SocketPath(c.GRPC.Address)
	if err != nil {
		return bad("grpc.address", "%v", err)
	}
	c.GRPC.Address = addr
	if c.Admin.Address != "" {
		admin, err := SocketPath(c.Admin.Address)
		if err != nil {
			return bad("admin.address", "%v", err)
		}
		if admin == c.GRPC.Address {
			return bad("admin.address", "%q is the CRI socket too", admin)
		}
		c.Admin.Address = admin
	}
	if c.GRPC.MaxRecvMessageSize <= 0 {
		return bad("grpc.max_recv_message_size", "%d must be positive", c.GRPC.MaxRecvMessageSize)
	}
	if c.GRPC.MaxSendMessageSize <= 0 {
		return bad("grpc.max_send_message_size", "%d must be positive", c.GRPC.MaxSendMessageSize)
	}
	if net.ParseIP(c.Stream.Address) == nil {
		return bad("stream.address", "%q is not an IP address", c.Stream.Address)
	}
	if p, err := strconv.Atoi(c.Stream.Port); err != nil || p < 0 || p > 65535 {
		return bad("stream.port", "%q is not a port number", c.Stream.Port)
	}
	if c.Stream.IdleTimeout.Duration <= 0 {
		return bad("stream.idle_timeout", "%s must be positive", c.Stream.IdleTimeout)
	}
	if _, err := ParseLevel(c.Log.Level); err != nil {
		return bad("log.level", "%v", err)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return bad("log.format", "%q (want text or json)", c.Log.Format)
	}
	if len(c.Runtime.Handlers) == 0 {
		return bad("runtime.handlers", "at least one handler name is needed")
	}
	seen := map[string]bool{}
	for _, h := range c.Runtime.Handlers {
		if h == "" || strings.ContainsAny(h, " \t/") {
			return bad("runtime.handlers", "%q is not a valid handler name", h)
		}
		if seen[h] {
			return bad("runtime.handlers", "%q is listed twice", h)
		}
		seen[h] = true
	}
	if c.Runtime.CgroupDriver != "cgroupfs" && c.Runtime.CgroupDriver != "systemd" {
		return bad("runtime.cgroup_driver", "%q (want cgroupfs or systemd)", c.Runtime.CgroupDriver)
	}
	if c.Runtime.MaxWasmStack < 64<<10 {
		return bad("runtime.max_wasm_stack", "%d is below 65536 bytes", c.Runtime.MaxWasmStack)
	}
	if c.Runtime.DefaultMemoryLimit < 0 {
		return bad("runtime.default_memory_limit", "%d must not be negative (0 is no default limit)", c.Runtime.DefaultMemoryLimit)
	}
	if c.Runtime.CompileTimeout.Duration <= 0 {
		return bad("runtime.compile_timeout", "%s must be positive", c.Runtime.CompileTimeout)
	}
	if c.Runtime.WritableLayerSize < 64<<10 {
		return bad("runtime.writable_layer_size", "%d is below 65536 bytes (64 KiB)", c.Runtime.WritableLayerSize)
	}
	if c.Runtime.WritableLayerInodes < 64 {
		return bad("runtime.writable_layer_inodes", "%d is below 64", c.Runtime.WritableLayerInodes)
	}
	if c.Runtime.CompileMemoryLimit < 64<<20 {
		return bad("runtime.compile_memory_limit", "%d is below 67108864 bytes (64 MiB)", c.Runtime.CompileMemoryLimit)
	}
	for key, v := range map[string]int64{
		"image.max_layer_size": c.Image.MaxLayerSize, "image.max_module_size": c.Image.MaxModuleSize,
		"image.max_unpacked_size": c.Image.MaxUnpackedSize, "image.max_unpacked_entries": c.Image.MaxUnpackedEntries,
	} {
		if v <= 0 {
			return bad(key, "%d must be positive", v)
		}
	}
	if len(c.Network.CNIBinDirs) == 0 {
		return bad("network.cni_bin_dirs", "no directory given")
	}
	for _, d := range append([]string{c.Network.CNIConfDir}, c.Network.CNIBinDirs...) {
		if !filepath.IsAbs(d) {
			return bad("network", "%q is not an absolute path", d)
		}
	}
	if b := c.Network.DefaultBridge; b == "" || len(b) > 15 || strings.ContainsAny(b, "/ \t\n:") {
		return bad("network.default_bridge", "%q is not a link name (1 to 15 characters, no '/', ':' or spaces)", b)
	}
	if ip, n, err := net.ParseCIDR(c.Network.DefaultSubnet); err != nil || ip.To4() == nil {
		return bad("network.default_subnet", "%q is not an IPv4 subnet (a.b.c.d/n)", c.Network.DefaultSubnet)
	} else if ones, _ := n.Mask.Size(); ones > 30 {
		return bad("network.default_subnet", "%q leaves no room for pods (/30 at most)", c.Network.DefaultSubnet)
	}
	if c.Network.PoolSize < 0 || c.Network.PoolSize > 256 {
		return bad("network.pool_size", "%d is not in 0-256", c.Network.PoolSize)
	}
	if c.Image.PullTimeout.Duration <= 0 {
		return bad("image.pull_timeout", "%s must be positive", c.Image.PullTimeout)
	}
	for _, h := range c.Registry.PlainHTTP {
		if h == "" || strings.Contains(h, "/") {
			return bad("registry.plain_http", "%q is not a host or host:port", h)
		}
		if _, _, err := net.SplitHostPort(h); err != nil && strings.Count(h, ":") == 1 {
			return bad("registry.plain_http", "%q: %v", h, err)
		}
	}
	if a := c.Debug.PprofAddress; a != "" {
		p, err := SocketPath(a)
		if err != nil {
			return bad("debug.pprof_address", "%v (pprof is served on a root-only unix socket; a TCP port would be open to every local user)", err)
		}
		if p == c.GRPC.Address || p == c.AdminSocket() {
			return bad("debug.pprof_address", "%q is another socket of wasmcri", p)
		}
		c.Debug.PprofAddress = p
	}
	if c.Registry.ConfigPath != "" && !filepath.IsAbs(c.Registry.ConfigPath) {
		return bad("registry.config_path", "%q is not an absolute path", c.Registry.ConfigPath)
	}
	if c.Registry.DockerConfig != "" && !filepath.IsAbs(c.Registry.DockerConfig) {
		return bad("registry.docker_config", "%q is not an absolute path", c.Registry.DockerConfig)
	}
	return nil
}

// SocketPath turns "unix:///x.sock" or "/x.sock" into "/x.sock".
func SocketPath(address string) (string, error) {
	p := strings.TrimPrefix(address, "unix://")
	if strings.Contains(p, "://") {
		return "", fmt.Errorf("%q: only unix sockets are supported", address)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%q is not an absolute socket path", address)
	}
	return p, nil
}

// ParseLevel maps a level name to a slog level.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q (want debug, info, warn or error)", s)
	}
	return l, nil
}

// Encode writes the configuration as TOML.
func (c *Config) Encode() ([]byte, error) {
	var buf bytes.Buffer
	enc := toml.NewEncoder(&buf)
	enc.Indent = ""
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// AdminSocket is the admin socket path: admin.address, or wasmcri-admin.sock
// beside the CRI socket.
func (c *Config) AdminSocket() string {
	if c.Admin.Address != "" {
		return c.Admin.Address
	}
	return filepath.Join(filepath.Dir(c.GRPC.Address), "wasmcri-admin.sock")
}
