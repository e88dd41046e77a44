package image

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
)

// RegistryOptions say how registries are reached.
type RegistryOptions struct {
	// PlainHTTP lists hosts ("host" or "host:port") spoken to over HTTP.
	// Loopback hosts fall back to HTTP without being listed.
	PlainHTTP []string
	// ConfigPath is a containerd-style hosts.toml directory, or "".
	ConfigPath string
	// DockerConfig is a docker config.json whose "auths" give credentials
	// to pulls that bring none, or "".
	DockerConfig string
}

// Auth is the registry credential for one pull, from PullImageRequest.Auth.
type Auth struct {
	Username      string
	Password      string
	IdentityToken string
	RegistryToken string
}

// Hosts builds the host list of one pull (or push): hosts.toml when
// configured, plain HTTP where allowed, and its own credentials.
func (o RegistryOptions) Hosts(ctx context.Context, auth *Auth) docker.RegistryHosts {
	opts := dockerconfig.HostOptions{}
	if o.ConfigPath != "" {
		opts.HostDir = dockerconfig.HostDirFromRoot(o.ConfigPath)
	}
	opts.Credentials = func(host string) (string, string, error) {
		a := auth
		if a == nil && o.DockerConfig != "" {
			var err error
			if a, err = dockerConfigAuth(o.DockerConfig, host); err != nil {
				return "", "", err
			}
		}
		if a == nil {
			return "", "", nil
		}
		if a.IdentityToken != "" {
			// An empty user with a secret is a long-lived refresh token.
			return "", a.IdentityToken, nil
		}
		return a.Username, a.Password, nil
	}
	configured := dockerconfig.ConfigureHosts(ctx, opts)
	return func(host string) ([]docker.RegistryHost, error) {
		hosts, err := configured(host)
		if err != nil {
			return nil, err
		}
		for i := range hosts {
			if slices.Contains(o.PlainHTTP, hosts[i].Host) {
				hosts[i].Scheme = "http"
			}
			if auth != nil && auth.RegistryToken != "" {
				if hosts[i].Header == nil {
					hosts[i].Header = http.Header{}
				}
				hosts[i].Header.Set("Authorization", "Bearer "+auth.RegistryToken)
			}
		}
		return hosts, nil
	}
}

// RegistryError gives a registry failure the error class CRI callers act
// on; a push's failures get the same.
func RegistryError(ref string, err error) error {
	var status remoteerrors.ErrUnexpectedStatus
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: pull timed out: %w", ref, err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%s: pull canceled: %w", ref, err)
	case errdefs.IsNotFound(err):
		return fmt.Errorf("%s: not found in the registry: %w", ref, errdefs.ErrNotFound)
	case errors.As(err, &status) && (status.StatusCode == http.StatusUnauthorized):
		return fmt.Errorf("%s: the registry refused the credentials (%s): %w", ref, status.Status, errdefs.ErrUnauthenticated)
	case errors.As(err, &status) && status.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%s: %s: %w", ref, status.Status, errdefs.ErrPermissionDenied)
	case errdefs.IsUnauthorized(err) || errors.Is(err, docker.ErrInvalidAuthorization):
		return fmt.Errorf("%s: %v: %w", ref, err, errdefs.ErrUnauthenticated)
	case isNetError(err):
		return fmt.Errorf("%s: registry unreachable: %v: %w", ref, err, errdefs.ErrUnavailable)
	}
	return fmt.Errorf("%s: %w", ref, err)
}

func isNetError(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe) || errors.Is(err, syscall.ECONNREFUSED)
}

// dockerConfigAuth finds host's credentials in a docker config.json, read
// afresh on each pull so that a node's credentials can be rotated.
func dockerConfigAuth(path, host string) (*Auth, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("docker config %s: %w", path, err)
	}
	var cfg struct {
		Auths map[string]struct {
			Auth          string `json:"auth"`
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("docker config %s: %w", path, err)
	}
	keys := []string{host, "https://" + host, "http://" + host}
	if host == "registry-1.docker.io" || host == "docker.io" {
		keys = append(keys, "https://index.docker.io/v1/", "docker.io", "index.docker.io")
	}
	for _, k := range keys {
		e, ok := cfg.Auths[k]
		if !ok {
			continue
		}
		a := &Auth{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken}
		if e.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("docker config %s: auth of %s is not base64", path, k)
			}
			a.Username, a.Password, _ = strings.Cut(string(dec), ":")
		}
		return a, nil
	}
	return nil, nil
}
