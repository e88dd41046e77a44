#!/usr/bin/env bash
# The wasmcri demo: start a registry on 127.0.0.1, push the example Wasm
# program as an image, run it in a pod through wasmcri with crictl, show
# its log, and clean everything up. Run it with `make demo`.
set -euo pipefail

WASMCRI=${WASMCRI:?set WASMCRI to the wasmcri binary (make demo does)}
CRICTL=${CRICTL:?set CRICTL to the crictl binary (make demo does)}
# CNI_DIRS: where the CNI plugins are, ':'-separated (make demo adds its
# own build of them after the node's).
CNI_DIRS=${CNI_DIRS:-/usr/lib/cni:/opt/cni/bin}
# The demo's pod network: a bridge of its own, removed at the end.
BRIDGE=wasmcri-demo
# REGISTRY is a docker-registry binary, or "builtin" for an in-memory
# registry built from this repository (the default when docker-registry
# is not installed: the demo needs nothing but Go).
REGISTRY=${REGISTRY:-$(command -v docker-registry || echo builtin)}

work=$(mktemp -d /tmp/wasmcri-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Pods a failed run left: their namespaces are pinned under the state.
  for ns in "$work"/state/netns/*; do [ -e "$ns" ] && umount -l "$ns" 2>/dev/null; done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "$REGISTRY" = builtin ]; then
  step "registry: in memory (hack/demoregistry; docker-registry is not installed)"
  go build -C "$(dirname "$0")/.." -o "$work/demoregistry" ./hack/demoregistry
  mkfifo "$work/registry.addr"
  "$work/demoregistry" >"$work/registry.addr" 2>"$work/registry.log" &
  pids+=($!)
  # It prints its address once it listens.
  read -r registry <"$work/registry.addr"
else
  # A free loopback port for the registry.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 5055)
  registry=127.0.0.1:$port
  step "registry: $REGISTRY on $registry"
  cat >"$work/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: $registry}
YAML
  "$REGISTRY" serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do curl -fs "http://$registry/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
fi
image=$registry/demo/hello:v1

step "build examples/hello for wasip1 and push it as a Wasm OCI artifact"
GOOS=wasip1 GOARCH=wasm go build -C "$(dirname "$0")/../examples/hello" -o "$work/hello.wasm" .
"$WASMCRI" image push --insecure "$work/hello.wasm" "$image"

step "wasmcri serve (state in $work)"
sock=$work/wasmcri.sock
bins=$(printf '"%s", ' $(echo "$CNI_DIRS" | tr ':' ' '))
cat >"$work/config.toml" <<TOML
version = 1
[network]
cni_bin_dirs = [${bins%, }]
cni_conf_dir = "$work/net.d"
default_bridge = "$BRIDGE"
TOML
"$WASMCRI" serve --config "$work/config.toml" --root "$work/root" --state "$work/state" --listen "unix://$sock" >"$work/wasmcri.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done

: >"$work/crictl.yaml"
crictl() { "$CRICTL" --config "$work/crictl.yaml" --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" "$@"; }

step "crictl pull $image"
crictl pull "$image"
crictl images

cat >"$work/pod.json" <<JSON
{"metadata": {"name": "hello", "namespace": "demo", "uid": "demo-hello"}, "log_directory": "$work/logs"}
JSON
cat >"$work/container.json" <<JSON
{"metadata": {"name": "hello"}, "image": {"image": "$image"},
 "args": ["from", "a", "Wasm", "pod"], "envs": [{"key": "GREETING", "value": "hello"}],
 "log_path": "hello.log"}
JSON

step "crictl runp / create / start"
pod=$(crictl runp "$work/pod.json")
echo "pod $pod, address $(crictl inspectp -o go-template --template '{{.status.network.ip}}' "$pod")"
ctr=$(crictl create "$pod" "$work/container.json" "$work/pod.json")
crictl start "$ctr"
for _ in $(seq 100); do
  [ "$(crictl inspect -o go-template --template '{{.status.state}}' "$ctr")" = CONTAINER_EXITED ] && break
  sleep 0.1
done
crictl ps -a

step "crictl logs $ctr"
crictl logs "$ctr"

step "exit code"
crictl inspect -o go-template --template '{{.status.exitCode}} {{.status.reason}}{{"\n"}}' "$ctr"

step "clean up"
crictl stopp "$pod" >/dev/null
crictl rmp "$pod"
crictl rmi "$image"
echo "demo done"
