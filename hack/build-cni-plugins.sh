#!/usr/bin/env bash
# Builds the CNI plugins wasmcri's built-in pod network uses (bridge,
# host-local, loopback, portmap) at a pinned version into DIR, from the Go
# module proxy: a node without Debian's containernetworking-plugins (or the
# upstream tarball in /opt/cni/bin) can still run the tests and the demo.
# Skipped when DIR holds them all.
#
#   hack/build-cni-plugins.sh VERSION DIR
set -euo pipefail
version=$1 dir=$2
plugins=(main/bridge ipam/host-local main/loopback meta/portmap)
have=1
for p in "${plugins[@]}"; do [ -x "$dir/$(basename "$p")" ] || have=0; done
[ "$have" = 1 ] && exit 0

tmp="$dir.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
pkgs=()
for p in "${plugins[@]}"; do pkgs+=("github.com/containernetworking/plugins/plugins/$p@$version"); done
GOBIN="$tmp" GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 go install -trimpath "${pkgs[@]}"
mkdir -p "$dir"
for p in "${plugins[@]}"; do mv "$tmp/$(basename "$p")" "$dir/"; done
