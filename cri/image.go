package cri

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/wasmcri/wasmcri/image"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PullImage pulls a Wasm image; the returned ref is the image ID.
func (s *Server) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	auth, err := pullAuth(req.GetAuth())
	if err != nil {
		return nil, err
	}
	img, err := s.images.Pull(ctx, req.GetImage().GetImage(), auth)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.PullImageResponse{ImageRef: img.ID}, nil
}

// pullAuth reads CRI credentials; "auth" is base64 "user:password" as in
// a docker config.json.
func pullAuth(a *runtimeapi.AuthConfig) (*image.Auth, error) {
	if a == nil {
		return nil, nil
	}
	out := &image.Auth{Username: a.GetUsername(), Password: a.GetPassword(), IdentityToken: a.GetIdentityToken(), RegistryToken: a.GetRegistryToken()}
	if a.GetAuth() != "" {
		b, err := base64.StdEncoding.DecodeString(a.GetAuth())
		if err != nil {
			return nil, fmt.Errorf("auth is not base64: %w", errdefs.ErrInvalidArgument)
		}
		user, pass, ok := strings.Cut(string(b), ":")
		if !ok {
			return nil, fmt.Errorf("auth is not user:password: %w", errdefs.ErrInvalidArgument)
		}
		out.Username, out.Password = user, pass
	}
	return out, nil
}

// ImageStatus reports an image, or no image (not an error) when absent.
func (s *Server) ImageStatus(ctx context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	img, err := s.images.Get(req.GetImage().GetImage())
	if errdefs.IsNotFound(err) {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ImageStatusResponse{Image: criImage(img)}
	if req.GetVerbose() {
		b, err := json.Marshal(img)
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"info": string(b)}
	}
	return resp, nil
}

// ListImages lists images, or the one the filter names.
func (s *Server) ListImages(ctx context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	resp := &runtimeapi.ListImagesResponse{}
	if ref := req.GetFilter().GetImage().GetImage(); ref != "" {
		img, err := s.images.Get(ref)
		if errdefs.IsNotFound(err) {
			return resp, nil
		}
		if err != nil {
			return nil, err
		}
		resp.Images = []*runtimeapi.Image{criImage(img)}
		return resp, nil
	}
	imgs, err := s.images.List()
	if err != nil {
		return nil, err
	}
	for _, img := range imgs {
		resp.Images = append(resp.Images, criImage(img))
	}
	return resp, nil
}

// RemoveImage removes an image and all its names; absent is not an error.
func (s *Server) RemoveImage(ctx context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	if err := s.images.Remove(ctx, req.GetImage().GetImage()); err != nil {
		return nil, err
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

// ImageFsInfo reports the disk the image store uses.
func (s *Server) ImageFsInfo(ctx context.Context, req *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	u, err := s.images.Usage()
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{{
		Timestamp:  time.Now().UnixNano(),
		FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: u.Mountpoint},
		UsedBytes:  &runtimeapi.UInt64Value{Value: u.Bytes},
		InodesUsed: &runtimeapi.UInt64Value{Value: u.Inodes},
	}}}, nil
}

func criImage(img *image.Image) *runtimeapi.Image {
	out := &runtimeapi.Image{
		Id:          img.ID,
		RepoTags:    img.RepoTags,
		RepoDigests: img.RepoDigests,
		Size:        uint64(img.Size),
		Spec:        &runtimeapi.ImageSpec{Image: img.ID, Annotations: img.Annotations},
	}
	// The image config's user, "uid[:gid]" or "name[:group]", as kubelet's
	// runAsNonRoot check reads it. Wasm modules run as nobody in particular.
	if user, _, _ := strings.Cut(img.User, ":"); user != "" {
		if uid, err := strconv.ParseInt(user, 10, 64); err == nil {
			out.Uid = &runtimeapi.Int64Value{Value: uid}
		} else {
			out.Username = user
		}
	}
	return out
}
