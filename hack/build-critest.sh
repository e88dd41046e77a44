#!/usr/bin/env bash
# Builds critest, cri-tools' CRI validation suite, at a pinned version into
# OUT (skipped when OUT exists). critest is a Go test binary, not a
# command, so a throwaway wrapper module requires cri-tools with its test
# dependencies and `go test -c` compiles the suite.
#
#   hack/build-critest.sh VERSION OUT
set -euo pipefail
version=$1 out=$2
[ -x "$out" ] && exit 0

work=$(mktemp -d /tmp/wasmcri-build-critest.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
go mod init wasmcri.local/build-critest >/dev/null 2>&1
go get -t "sigs.k8s.io/cri-tools/cmd/critest@$version" >/dev/null 2>&1 ||
  go get -t "sigs.k8s.io/cri-tools/cmd/critest@$version"
mkdir -p "$(dirname "$out")"
go test -c -trimpath -o "$out.tmp" sigs.k8s.io/cri-tools/cmd/critest
mv "$out.tmp" "$out"
