// Package testregistry runs go-containerregistry's OCI registry in the
// test process on 127.0.0.1, for unit tests that pull and push real
// images over HTTP.
package testregistry

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Start runs a registry until the test ends and returns its host:port.
func Start(t testing.TB) string {
	return StartWithBasicAuth(t, "", "")
}

// StartWithHook runs a registry that calls hook with every request first.
func StartWithHook(t testing.TB, hook func(*http.Request)) string {
	t.Helper()
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hook(r)
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// StartWithBasicAuth runs a registry that, when user is set, answers 401
// with a Basic challenge unless the request carries user:pass, as a
// registry behind htpasswd does.
func StartWithBasicAuth(t testing.TB, user, pass string) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if user != "" {
		inner := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			inner.ServeHTTP(w, r)
		})
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}
