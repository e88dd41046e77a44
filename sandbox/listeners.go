package sandbox

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/wasmcri/wasmcri/internal/netns"
	"github.com/wasmcri/wasmcri/wasm"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// A WASI preview1 module cannot open sockets, so the TCP ports its
// container declares are bound for it, in the pod's network namespace, at
// each start, and handed over at fd 3 and up (wasm.Listener).

// portsAnnotation is where kubelet puts a container's declared ports: the
// JSON of its v1.ContainerPort list. Only kubelet knows which container of
// a pod listens where; port_mappings are the pod's, all containers' ports.
const portsAnnotation = "io.kubernetes.container.ports"

// kubeletContainerLabel marks a container kubelet made: for those the
// annotation is the whole truth, and a container without it declares no
// port.
const kubeletContainerLabel = "io.kubernetes.container.name"

// maxPortsAnnotation bounds the annotation kubelet's 64 ports fit in.
const maxPortsAnnotation = 64 << 10

// Port is a TCP port a container serves on.
type Port struct {
	Number int32 `json:"port"`
	// Name is the port's name in LISTEN_FDNAMES: the declared name, or
	// the number.
	Name string `json:"name"`
}

// containerPort is the part of kubelet's v1.ContainerPort we read.
type containerPort struct {
	Name          string `json:"name"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

// containerPorts are the TCP ports a container listens on: those of its
// ports annotation; without one, for the only container of a pod not made
// by kubelet (crictl's), the pod's port_mappings. onlyContainer is asked
// only then. UDP and SCTP ports get no listener: WASI preview1 has no
// datagram sockets.
func containerPorts(cfg *runtimeapi.ContainerConfig, pod *runtimeapi.PodSandboxConfig, onlyContainer func() bool) ([]Port, error) {
	var ports []Port
	add := func(number int32, name string) {
		for _, p := range ports {
			if p.Number == number {
				return
			}
		}
		if name == "" {
			name = strconv.Itoa(int(number))
		}
		ports = append(ports, Port{Number: number, Name: name})
	}
	field := fmt.Sprintf("annotations[%q]", portsAnnotation)
	raw, ok := cfg.GetAnnotations()[portsAnnotation]
	switch {
	case ok:
		if len(raw) > maxPortsAnnotation {
			return nil, invalid("%s: %d bytes, at most %d", field, len(raw), maxPortsAnnotation)
		}
		var declared []containerPort
		if err := json.Unmarshal([]byte(raw), &declared); err != nil {
			return nil, invalid("%s is not a JSON list of container ports: %v", field, err)
		}
		for k, p := range declared {
			if p.ContainerPort < 1 || p.ContainerPort > 65535 {
				return nil, invalid("%s[%d].containerPort %d is not in 1-65535", field, k, p.ContainerPort)
			}
			if p.Name != "" && (len(p.Name) > 63 || strings.ContainsAny(p.Name, ":\x00\n")) {
				return nil, invalid("%s[%d].name %q: at most 63 bytes, without ':', NUL or newline", field, k, p.Name)
			}
			if p.Protocol == "" || strings.EqualFold(p.Protocol, "TCP") {
				add(p.ContainerPort, p.Name)
			}
		}
	case len(pod.GetPortMappings()) > 0 && cfg.GetLabels()[kubeletContainerLabel] == "" && onlyContainer():
		for _, pm := range pod.GetPortMappings() {
			if pm.GetProtocol() == runtimeapi.Protocol_TCP && pm.GetContainerPort() > 0 {
				add(pm.GetContainerPort(), "")
			}
		}
	}
	if len(ports) > wasm.MaxListeners {
		return nil, invalid("the container declares %d TCP ports: at most %d", len(ports), wasm.MaxListeners)
	}
	return ports, nil
}

// openListeners binds the ports in the pod's network namespace (the
// node's for a pod on the node's network), on all its addresses. The
// sockets stay in that namespace for their life.
func openListeners(netnsPath string, ports []Port) (ls []wasm.Listener, err error) {
	if len(ports) == 0 {
		return nil, nil
	}
	bind := func() error {
		for _, p := range ports {
			fd, err := listenTCP(int(p.Number))
			if err != nil {
				return fmt.Errorf("listen on port %d (%s): %w", p.Number, p.Name, err)
			}
			ls = append(ls, wasm.Listener{FD: fd, Name: p.Name})
		}
		return nil
	}
	if netnsPath == "" {
		err = bind()
	} else {
		err = netns.Do(netnsPath, bind)
	}
	if err != nil {
		closeListeners(ls)
		return nil, err
	}
	return ls, nil
}

func closeListeners(ls []wasm.Listener) {
	for _, l := range ls {
		unix.Close(l.FD)
	}
}

// listenBacklog is asked of listen(2); the kernel caps it at somaxconn.
const listenBacklog = 4096

// listenTCP makes a non-blocking listening socket on port: IPv6 and IPv4
// on one socket, or IPv4 alone where the namespace has no IPv6.
func listenTCP(port int) (int, error) {
	fd, err := listenOn(unix.AF_INET6, &unix.SockaddrInet6{Port: port})
	if err == nil {
		return fd, nil
	}
	return listenOn(unix.AF_INET, &unix.SockaddrInet4{Port: port})
}

func listenOn(family int, sa unix.Sockaddr) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	// A restarted container binds its port again at once, whatever its
	// predecessor's connections left in TIME_WAIT.
	err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err == nil && family == unix.AF_INET6 {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	}
	if err == nil {
		err = unix.Bind(fd, sa)
	}
	if err == nil {
		err = unix.Listen(fd, listenBacklog)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}
