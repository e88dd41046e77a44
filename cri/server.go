// Package cri serves the Kubernetes Container Runtime Interface (v1) over
// gRPC. Handlers only translate between CRI messages and the sandbox and
// image packages, which own all state.
package cri

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/wasmcri/wasmcri/image"
	"github.com/wasmcri/wasmcri/sandbox"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Info is what the server reports of itself.
type Info struct {
	// Version of wasmcri.
	Version string
	// Handlers are the runtime handler names served, default first.
	Handlers []string
	// Config is shown by verbose Status calls.
	Config any
	// CgroupDriver is what RuntimeConfig reports: "cgroupfs" or "systemd".
	CgroupDriver string
}

// Server implements the CRI RuntimeService and ImageService.
type Server struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	sandboxes *sandbox.Manager
	images    *image.Service
	streams   *StreamServer
	info      Info
	log       *slog.Logger

	// sandboxEntries and containerEntries keep ListPodSandbox's and
	// ListContainers' entries encoded; sandboxAttributes and
	// containerAttributes the objects' attributes in the stats calls.
	sandboxEntries, sandboxAttributes     *entryCache[*sandbox.Sandbox]
	containerEntries, containerAttributes *entryCache[*sandbox.Container]
}

// NewServer translates CRI calls onto the given sandbox manager, image
// service and stream server.
func NewServer(sandboxes *sandbox.Manager, images *image.Service, streams *StreamServer, info Info, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{sandboxes: sandboxes, images: images, streams: streams, info: info, log: log,
		sandboxEntries: newEntryCache[*sandbox.Sandbox](), sandboxAttributes: newEntryCache[*sandbox.Sandbox](),
		containerEntries: newEntryCache[*sandbox.Container](), containerAttributes: newEntryCache[*sandbox.Container]()}
}

// Register adds both CRI services to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	runtimeapi.RegisterRuntimeServiceServer(g, s)
	runtimeapi.RegisterImageServiceServer(g, s)
}

// NewGRPCServer makes a gRPC server with the CRI services registered and
// domain errors turned into gRPC status codes.
func (s *Server) NewGRPCServer(maxRecv, maxSend int) *grpc.Server {
	g := grpc.NewServer(
		grpc.MaxRecvMsgSize(maxRecv),
		grpc.MaxSendMsgSize(maxSend),
		// Recovery is outermost: a panic anywhere below becomes an error.
		grpc.ChainUnaryInterceptor(s.recoverUnary, s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.recoverStream, s.streamInterceptor),
	)
	s.Register(g)
	return g
}

// Serve answers CRI calls on l until g stops.
func Serve(g *grpc.Server, l net.Listener) error { return g.Serve(l) }

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	if err != nil {
		err = errgrpc.ToGRPC(err)
		// kubelet asks after removed objects routinely; that is no warning.
		level := slog.LevelWarn
		if status.Code(err) == codes.NotFound {
			level = slog.LevelDebug
		}
		s.log.Log(ctx, level, "CRI call failed", "method", info.FullMethod, "error", err, "duration", time.Since(start))
	} else if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("CRI call", "method", info.FullMethod, "duration", time.Since(start))
	}
	return resp, err
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return errgrpc.ToGRPC(handler(srv, ss))
}
