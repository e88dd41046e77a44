package cri

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/sandbox"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// StreamServer carries exec, attach and port-forward sessions over HTTP,
// with kubelet's CRI streaming server library; the CRI calls hand out its
// URLs.
type StreamServer struct {
	server   streaming.Server
	http     *http.Server
	listener net.Listener
}

// NewStreamServer listens on addr ("127.0.0.1:0" picks a port).
func NewStreamServer(addr string, idleTimeout time.Duration, sandboxes *sandbox.Manager) (*StreamServer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("stream server: %w", err)
	}
	cfg := streaming.DefaultConfig
	cfg.Addr = l.Addr().String()
	cfg.BaseURL = &url.URL{Scheme: "http", Host: l.Addr().String()}
	cfg.StreamIdleTimeout = idleTimeout
	server, err := streaming.NewServer(cfg, streamRuntime{sandboxes})
	if err != nil {
		l.Close()
		return nil, err
	}
	return &StreamServer{server: server, http: &http.Server{Handler: server, ReadHeaderTimeout: 30 * time.Second}, listener: l}, nil
}

// Addr is where the server listens.
func (s *StreamServer) Addr() string { return s.listener.Addr().String() }

// Serve runs until Close.
func (s *StreamServer) Serve() error {
	if err := s.http.Serve(s.listener); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// Close ends the server and every open stream.
func (s *StreamServer) Close() error { return s.http.Close() }

// streamRuntime runs the sessions the stream server accepts.
type streamRuntime struct{ m *sandbox.Manager }

func (r streamRuntime) Exec(ctx context.Context, containerID string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, _ <-chan remotecommandserver.TerminalSize) error {
	code, err := r.m.Exec(ctx, containerID, sandbox.ExecOptions{Cmd: cmd, Stdin: in, Stdout: out, Stderr: errw, TTY: tty})
	if err != nil {
		return err
	}
	if code != 0 {
		// The stream server reports this code to the client as the
		// command's exit status.
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: int(code)}
	}
	return nil
}

func (r streamRuntime) Attach(ctx context.Context, containerID string, in io.Reader, out, errw io.WriteCloser, tty bool, _ <-chan remotecommandserver.TerminalSize) error {
	return r.m.Attach(ctx, containerID, in, out, errw, tty)
}

func (r streamRuntime) PortForward(ctx context.Context, podSandboxID string, port int32, stream io.ReadWriteCloser) error {
	return r.m.PortForward(ctx, podSandboxID, port, stream)
}

// Exec hands out a stream URL for a command in a running container.
func (s *Server) Exec(ctx context.Context, req *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	if err := s.requireRunning(req.GetContainerId()); err != nil {
		return nil, err
	}
	return s.streams.server.GetExec(req)
}

// Attach hands out a stream URL to a running container's streams.
func (s *Server) Attach(ctx context.Context, req *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	if err := s.requireRunning(req.GetContainerId()); err != nil {
		return nil, err
	}
	return s.streams.server.GetAttach(req)
}

// PortForward hands out a stream URL to a sandbox's ports.
func (s *Server) PortForward(ctx context.Context, req *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	sb, err := s.sandboxes.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	req.PodSandboxId = sb.ID
	return s.streams.server.GetPortForward(req)
}

// ExecSync runs a command to completion, for exec probes.
func (s *Server) ExecSync(ctx context.Context, req *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	code, stdout, stderr, err := s.sandboxes.ExecSync(ctx, req.GetContainerId(), req.GetCmd(), req.GetTimeout(), maxExecSyncOutput)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ExecSyncResponse{ExitCode: code, Stdout: stdout, Stderr: stderr}, nil
}

// maxExecSyncOutput bounds each stream ExecSync returns (as containerd).
const maxExecSyncOutput = 16 << 20

func (s *Server) requireRunning(id string) error {
	c, err := s.sandboxes.Container(id)
	if err != nil {
		return err
	}
	if c.State != sandbox.ContainerRunning {
		return fmt.Errorf("container %s is %s, not running: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	return nil
}
