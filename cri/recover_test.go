package cri_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wasmcri/wasmcri/cri"
	"github.com/wasmcri/wasmcri/internal/syncbuf"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// panics is a gRPC service whose calls panic, registered beside the CRI
// services on the daemon's own server configuration.
var panics = grpc.ServiceDesc{
	ServiceName: "wasmcri.test.Panics",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Unary",
		Handler: func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(context.Context, any) (any, error) { panic("a handler bug") }
			return interceptor(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/wasmcri.test.Panics/Unary"}, h)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Stream",
		ServerStreams: true,
		Handler:       func(any, grpc.ServerStream) error { panic("a stream handler bug") },
	}},
}

func TestHandlerPanicIsAnInternalError(t *testing.T) {
	// The log destination the server and the test share.
	var logged syncbuf.Buffer
	s := cri.NewServer(nil, nil, nil, cri.Info{Version: "test", Handlers: []string{"wasmtime"}}, slog.New(slog.NewTextHandler(&logged, nil)))
	g := s.NewGRPCServer(1<<20, 1<<20)
	g.RegisterService(&panics, struct{}{})
	dir, err := os.MkdirTemp("", "wcri")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	defer g.Stop()
	conn, err := grpc.NewClient("unix://"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()

	err = conn.Invoke(ctx, "/wasmcri.test.Panics/Unary", &emptypb.Empty{}, &emptypb.Empty{})
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "a handler bug") {
		t.Fatalf("unary panic: %v", err)
	}
	stream, err := conn.NewStream(ctx, &panics.Streams[0], "/wasmcri.test.Panics/Stream")
	if err != nil {
		t.Fatal(err)
	}
	stream.SendMsg(&emptypb.Empty{})
	stream.CloseSend()
	if err := stream.RecvMsg(&emptypb.Empty{}); status.Code(err) != codes.Internal {
		t.Fatalf("stream panic: %v", err)
	}
	// The same server still answers.
	v, err := runtimeapi.NewRuntimeServiceClient(conn).Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil || v.GetRuntimeName() == "" {
		t.Fatalf("after the panics: %v %v", v, err)
	}
	if out := logged.String(); !strings.Contains(out, "CRI handler panicked") || !strings.Contains(out, "recover_test.go") {
		t.Fatalf("the log has no stack of the panic:\n%s", out)
	}
}
