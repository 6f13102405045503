# wasmpod: `make help` lists the targets. Everything that needs root (containerd, mounts)
# says so; the test bed installs what it needs on Debian 12.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help build release lint unit e2e test demo bench bench-density bench-wasmtime clean installer-test chart-test installer-live installer-image
.PHONY: kind-test kind-check image chart-lint install deps cluster-up cluster-down cluster-test components

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## install what builds and tests need on Debian 12: packages, Wasm targets, containerd 1.7/2.1 (root)
	bash e2e/testbed.sh install

# The isolated host is a workspace of its own (shim/isolated/Cargo.toml says why); its build
# output goes to the same target/.
ISOLATED := cd shim/isolated &&

build: ## debug build of both shims (target/debug/containerd-shim-wasmtime{,-isolated}-v1)
	$(CARGO) build -p wasmpod-shim
	$(ISOLATED) $(CARGO) build

release: ## release build of both shims (target/release/containerd-shim-wasmtime{,-isolated}-v1)
	$(CARGO) build --release -p wasmpod-shim
	$(ISOLATED) $(CARGO) build --release

lint: ## rustfmt, clippy (warnings are errors), and the crate layering ARCHITECTURE.md sets
	python3 .ci/layers.py
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(ISOLATED) $(CARGO) fmt -- --check
	$(ISOLATED) $(CARGO) clippy --all-targets -- -D warnings

unit: ## unit tests (no root needed)
	$(CARGO) test --workspace --exclude wasmpod-e2e
	$(ISOLATED) $(CARGO) test

e2e: ## end-to-end tests through real containerd 1.7 and 2.1 (root)
	bash e2e/run.sh

installer-test: ## installer unit and fixture tests, mock Kubernetes API (no root)
	$(CARGO) test -p wasmpod-installer

chart-test: ## lint and render the chart with the real Helm engine, type-check objects, deploy/ drift
	bash charts/test.sh

installer-live: ## the installer against live containerd 1.7 and 2.1 (root, after the test bed)
	$(CARGO) build -p wasmpod-installer
	bash runtimeclass/live-test.sh 1.7
	bash runtimeclass/live-test.sh 2.1

IMAGE ?= wasmpod-installer:dev
installer-image: ## installer image, multi-arch (needs docker buildx)
	docker buildx build -f runtimeclass/Dockerfile --platform linux/amd64,linux/arm64 -t $(IMAGE) .

kind-test: ## kind cluster: images, helm install, Wasm workloads, helm test, uninstall (docker, kind, kubectl, helm)
	bash test-kind/run.sh

components: ## build the local cluster's Kubernetes, etcd, Helm and crictl from the Go module proxy (once; ~15 min cold)
	bash test-kind/components.sh

CONTAINERD ?= 2.1
cluster-up: ## a single-node Kubernetes here with wasmpod installed (root; CONTAINERD=2.1|1.7); kubeconfig in target/cluster/
	CONTAINERD=$(CONTAINERD) bash test-kind/cluster.sh up

cluster-down: ## stop the local cluster and remove everything it created (root)
	bash test-kind/cluster.sh down

cluster-test: ## the chart, installer and Wasm workloads on the local cluster, containerd 2.1 and 1.7 (root)
	bash test-kind/cluster-test.sh

kind-check: ## static checks, no Docker: bash -n + shellcheck on all scripts, YAML, kind test dry run
	bash test-kind/check.sh

image: ## installer image for this machine's architecture, into docker (IMAGE=...)
	DOCKER_BUILDKIT=1 docker build -f runtimeclass/Dockerfile -t $(IMAGE) .

chart-lint: chart-test ## the chart's lint and render checks (same as chart-test)

install: ## both shims into this node's containerd, without a node label (root)
	$(CARGO) build --release -p wasmpod-shim -p wasmpod-installer
	$(ISOLATED) $(CARGO) build --release
	./target/release/wasmpod-installer install --shim target/release/containerd-shim-wasmtime-v1 \
		--isolated-shim target/release/containerd-shim-wasmtime-isolated-v1 --skip-label

testbed-test: ## the test bed's fallback when Debian drops a pinned containerd, on fake archives (seconds, no root)
	bash e2e/testbed-test.sh

test: deps testbed-test lint unit chart-test kind-check e2e installer-live cluster-test ## everything CI runs (root): lint, unit, chart, static kind checks, end-to-end, installer on live containerd, the local cluster

demo: ## set up the test bed and run a Wasm pod through containerd's CRI (root)
	bash e2e/demo.sh

bench: ## start-up, memory and HTTP figures for wasmpod vs runc / native / wasmtime serve (root)
	bash e2e/bench.sh

bench-density: ## only the density table and plot: DENSITY pods per runtime (default 1000; runc at most 200)
	DENSITY=$${DENSITY:-1000} bash e2e/bench.sh density

bench-wasmtime: ## build wasmtime-cli 48 for `wasmtime serve` in make bench (slow: ~20 min on 2 cores)
	cargo install wasmtime-cli --version 48.0.8 --locked --root $${WASMPOD_TESTBED:-/var/tmp/wasmpod-testbed}/wasmtime-cli

clean: ## remove build output (the test bed cache in /var/tmp/wasmpod-testbed stays)
	$(CARGO) clean
