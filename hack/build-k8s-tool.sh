#!/usr/bin/env bash
# Builds one pinned upstream Kubernetes or etcd binary from the Go module
# proxy into OUT (skipped when OUT exists). `go install` refuses these
# modules because of their replace directives, so a throwaway wrapper
# module requires them with the staging replacements resolved to the
# published versions.
#
#   hack/build-k8s-tool.sh kubelet|kube-apiserver|kube-controller-manager|kube-proxy|kubectl VERSION OUT
#   hack/build-k8s-tool.sh etcd VERSION OUT
set -euo pipefail
name=$1 version=$2 out=$3
[ -x "$out" ] && exit 0

work=$(mktemp -d /tmp/wasmcri-build-$name.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

case $name in
kubelet|kube-apiserver|kube-controller-manager|kube-proxy|kubectl)
  staging=v0.${version#v1.}
  go mod init wasmcri.local/build-$name >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  {
    echo "require k8s.io/kubernetes $version"
    # Every staging module at its published version.
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod" |
      grep -v -e sample-cli-plugin -e sample-controller |
      while read -r mod; do echo "replace $mod => $mod $staging"; done
  } >>go.mod
  case $name in
  kubelet) pkg=k8s.io/kubernetes/cmd/kubelet/app ;;
  kube-apiserver) pkg=k8s.io/kubernetes/cmd/kube-apiserver/app ;;
  kube-controller-manager) pkg=k8s.io/kubernetes/cmd/kube-controller-manager/app ;;
  kube-proxy) pkg=k8s.io/kubernetes/cmd/kube-proxy/app ;;
  kubectl) pkg=k8s.io/kubectl/pkg/cmd ;;
  esac
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" >tools.go
  go mod tidy >/dev/null
  go get "k8s.io/kubernetes/cmd/$name@$version" >/dev/null
  mkdir -p "$(dirname "$out")"
  go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version" -o "$out.tmp" "k8s.io/kubernetes/cmd/$name"
  ;;
etcd)
  go mod init wasmcri.local/build-etcd >/dev/null 2>&1
  {
    echo "require go.etcd.io/etcd/server/v3 $version"
    for mod in api/v3 client/pkg/v3 client/v3 pkg/v3; do
      echo "replace go.etcd.io/etcd/$mod => go.etcd.io/etcd/$mod $version"
    done
  } >>go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3/etcdmain"\n' >tools.go
  go mod tidy >/dev/null
  mkdir -p "$(dirname "$out")"
  go build -trimpath -ldflags "-s -w" -o "$out.tmp" go.etcd.io/etcd/server/v3
  ;;
*)
  echo "unknown tool $name" >&2
  exit 2
  ;;
esac
mv "$out.tmp" "$out"
