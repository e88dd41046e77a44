package cri

import (
	"context"
	"runtime/debug"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A panic in one handler would end the daemon, and with it every running
// pod: the instances live in its process. The recovery interceptors turn it
// into an Internal error for that one call, with the stack in the log.

func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (_ any, err error) {
	defer s.recovered(info.FullMethod, &err)
	return handler(ctx, req)
}

func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer s.recovered(info.FullMethod, &err)
	return handler(srv, ss)
}

// recovered, deferred, turns a panic into an Internal error in *err.
func (s *Server) recovered(method string, err *error) {
	p := recover()
	if p == nil {
		return
	}
	s.log.Error("CRI handler panicked", "method", method, "panic", p, "stack", string(debug.Stack()))
	*err = status.Errorf(codes.Internal, "%s: internal error in wasmcri (panic: %v); the daemon goes on", method, p)
}
