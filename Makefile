# wasmcri: a CRI runtime for WebAssembly pods on wasmtime.

GO            ?= go
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0-dev)
LDFLAGS       := -X main.version=$(VERSION)
BIN           := bin/wasmcri

# Pinned test tools, built from the Go module proxy into a cache keyed by
# version. The cache only saves time: a missing tool is built again.
CRICTL_VERSION ?= v1.37.0
KUBE_VERSION   ?= v1.37.2
ETCD_VERSION   ?= v3.6.16
CRITEST_VERSION ?= v1.37.0
CNI_VERSION    ?= v1.9.0
TOOLS_DIR      ?= $(HOME)/.cache/wasmcri/tools
CRICTL         := $(TOOLS_DIR)/crictl-$(CRICTL_VERSION)/crictl
KUBELET        := $(TOOLS_DIR)/kubelet-$(KUBE_VERSION)/kubelet
KUBE_APISERVER := $(TOOLS_DIR)/kube-apiserver-$(KUBE_VERSION)/kube-apiserver
KUBECTL        := $(TOOLS_DIR)/kubectl-$(KUBE_VERSION)/kubectl
KUBE_CONTROLLER_MANAGER := $(TOOLS_DIR)/kube-controller-manager-$(KUBE_VERSION)/kube-controller-manager
KUBE_PROXY     := $(TOOLS_DIR)/kube-proxy-$(KUBE_VERSION)/kube-proxy
ETCD           := $(TOOLS_DIR)/etcd-$(ETCD_VERSION)/etcd
CRITEST        := $(TOOLS_DIR)/critest-$(CRITEST_VERSION)/critest
# CNI plugins: the node's (Debian's /usr/lib/cni, upstream's /opt/cni/bin)
# first, these when the node has none.
CNI_DIR        := $(TOOLS_DIR)/cni-plugins-$(CNI_VERSION)
CNI_DIRS       := /usr/lib/cni:/opt/cni/bin:$(CNI_DIR)
TOOLS          := $(CRICTL) $(KUBELET) $(KUBE_APISERVER) $(KUBECTL) $(KUBE_CONTROLLER_MANAGER) $(KUBE_PROXY) $(ETCD) $(CRITEST) $(CNI_DIR)/bridge
TOOL_ENV       := CRICTL=$(CRICTL) KUBELET=$(KUBELET) KUBE_APISERVER=$(KUBE_APISERVER) KUBECTL=$(KUBECTL) \
                  KUBE_CONTROLLER_MANAGER=$(KUBE_CONTROLLER_MANAGER) KUBE_PROXY=$(KUBE_PROXY) ETCD=$(ETCD) WASMCRI_CNI_DIRS=$(CNI_DIRS)

# Where `make run` keeps its state: inside the checkout, no root needed.
RUN_DIR ?= $(CURDIR)/_output

export RUST_LIB_BACKTRACE = 0

.PHONY: all build run demo test unit integration conformance fuzz lint tools clean bench bench-deps

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/wasmcri

## run: the daemon on a local state dir; point crictl at unix://$(RUN_DIR)/wasmcri.sock
run: build
	mkdir -p $(RUN_DIR)
	$(BIN) serve --root $(RUN_DIR)/root --state $(RUN_DIR)/state --listen unix://$(RUN_DIR)/wasmcri.sock

## demo: registry + push + pull + run a Wasm pod with crictl, then clean up
demo: build $(CRICTL) $(CNI_DIR)/bridge
	CRICTL=$(CRICTL) CNI_DIRS=$(CNI_DIRS) WASMCRI=$(CURDIR)/$(BIN) hack/demo.sh

tools: $(TOOLS)

$(CRICTL):
	mkdir -p $(dir $@)
	GOBIN=$(dir $@) $(GO) install sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)

$(KUBELET) $(KUBE_APISERVER) $(KUBECTL) $(KUBE_CONTROLLER_MANAGER) $(KUBE_PROXY):
	hack/build-k8s-tool.sh $(notdir $@) $(KUBE_VERSION) $@

$(ETCD):
	hack/build-k8s-tool.sh etcd $(ETCD_VERSION) $@

$(CRITEST):
	hack/build-critest.sh $(CRITEST_VERSION) $@

$(CNI_DIR)/bridge:
	hack/build-cni-plugins.sh $(CNI_VERSION) $(CNI_DIR)

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags conformance ./integration/

unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /integration)

integration: $(TOOLS)
	$(TOOL_ENV) $(GO) test -count=1 -timeout 30m ./integration/...

## test: everything CI runs
test: lint $(TOOLS)
	$(TOOL_ENV) $(GO) test -race -count=1 -timeout 45m ./...

# Every fuzz target, as package:Name; `make fuzz` fails if one is missing.
FUZZ_TARGETS := ./config:FuzzParse \
  ./image:FuzzUnpackLayers ./image:FuzzApplyEntries ./image:FuzzManifest ./image:FuzzImportLayout \
  ./wasm:FuzzExportMemoriesAndTables ./wasm:FuzzIovecs ./sandbox:FuzzContainerPorts ./internal/crilog:FuzzStreams
FUZZTIME ?= 10s

## fuzz: each fuzz target for FUZZTIME (their seed corpora also run in `make test`);
## a crasher found is written under the package's testdata/fuzz: keep it as a test case
fuzz:
	@for f in $$(grep -rhoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed 's/^func //'); do \
	  echo " $(FUZZ_TARGETS) " | grep -q ":$$f " || { echo "fuzz target $$f is not in FUZZ_TARGETS"; exit 1; }; \
	done
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t for $(FUZZTIME)"; \
	  GO=$(GO) sh hack/fuzz.sh $${t%%:*} $${t##*:} $(FUZZTIME); \
	done

## conformance: critest against a fresh daemon; rewrites docs/conformance.md
## (CRITEST_FOCUS=regexp runs some specs; the report stays in _output/conformance)
conformance: $(CRICTL) $(CRITEST)
	$(TOOL_ENV) CRITEST=$(CRITEST) CRITEST_VERSION=$(CRITEST_VERSION) \
	  WASMCRI_CONFORMANCE_DOC=$(CURDIR)/docs/conformance.md WASMCRI_CONFORMANCE_OUT=$(RUN_DIR)/conformance \
	  $(GO) test -tags conformance -count=1 -timeout 45m -run '^TestCritest$$' -v ./integration/

## bench: Go benchmarks, then the driver that rewrites docs/performance.md
bench: build bench-deps $(CNI_DIR)/bridge
	WASMCRI_CNI_DIRS=$(CNI_DIRS) $(GO) test -run '^$$' -bench . -benchtime 2s ./wasm ./bench
	WASMCRI_CNI_DIRS=$(CNI_DIRS) $(GO) run ./bench/driver -wasmcri $(BIN) -out docs/performance.md

# containerd and runc for the comparison; the driver skips it, saying why,
# where they cannot be installed or run.
bench-deps:
	@command -v containerd >/dev/null && command -v runc >/dev/null || \
	  (apt-get install -y -qq containerd runc >/dev/null 2>&1 || \
	   echo "bench: containerd/runc not installed; the comparison will be skipped")

clean:
	rm -rf bin $(RUN_DIR)
