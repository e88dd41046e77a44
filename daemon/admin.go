package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/image"
)

// The admin socket serves node-local operations that CRI has no call for,
// over HTTP on a root-only unix socket:
//
//	POST /v1/images/import?ref=REF   body: an OCI layout tarball
//
// It answers JSON: the image, or {"error": "..."} with a status that says
// what kind of failure it was.
func (d *Daemon) serveAdmin(path string) error {
	l, err := listenUnix(path, 0o600)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/images/import", d.importImage)
	d.admin = &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	d.adminListener = l
	go d.admin.Serve(l)
	return nil
}

// ImportResponse is what the import call answers.
type ImportResponse struct {
	ID          string   `json:"id,omitempty"`
	RepoTags    []string `json:"repoTags,omitempty"`
	RepoDigests []string `json:"repoDigests,omitempty"`
	Error       string   `json:"error,omitempty"`
}

func (d *Daemon) importImage(w http.ResponseWriter, r *http.Request) {
	ref := r.URL.Query().Get("ref")
	// The layout's blobs are held in memory while checked: bound them.
	limit := 4 * d.cfg.Image.MaxLayerSize
	layout, err := image.ReadLayoutTar(http.MaxBytesReader(w, r.Body, limit+1<<20), limit)
	var img *image.Image
	if err == nil {
		img, err = d.Images.Import(r.Context(), ref, layout)
	}
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(httpStatus(err))
		json.NewEncoder(w).Encode(ImportResponse{Error: err.Error()})
		return
	}
	json.NewEncoder(w).Encode(ImportResponse{ID: img.ID, RepoTags: img.RepoTags, RepoDigests: img.RepoDigests})
}

func httpStatus(err error) int {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge
	case errdefs.IsInvalidArgument(err):
		return http.StatusBadRequest
	case errdefs.IsNotFound(err):
		return http.StatusNotFound
	case errdefs.IsConflict(err), errdefs.IsFailedPrecondition(err):
		// Another image already holds this ID with other contents.
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// ImportImage sends an OCI layout tarball to the daemon listening on the
// admin socket at socketPath, to be recorded as ref.
func ImportImage(ctx context.Context, socketPath, ref string, layoutTar io.Reader) (*ImportResponse, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dialer net.Dialer
			return dialer.DialContext(ctx, "unix", socketPath)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://wasmcri/v1/images/import?ref="+url.QueryEscape(ref), layoutTar)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s (is wasmcri running?): %w", socketPath, err)
	}
	defer resp.Body.Close()
	var out ImportResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("import: %s", resp.Status)
	}
	if out.Error != "" {
		return nil, errors.New(out.Error)
	}
	return &out, nil
}
