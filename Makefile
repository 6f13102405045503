# wasmpod: `make help` lists the targets. Everything that needs root (containerd, mounts)
# says so; the test bed installs what it needs on Debian 12.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help build release lint unit e2e test demo bench clean installer-test chart-test installer-live installer-image

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## debug build of the shim (target/debug/containerd-shim-wasmtime-v1)
	$(CARGO) build -p wasmpod-shim

release: ## release build of the shim (target/release/containerd-shim-wasmtime-v1)
	$(CARGO) build --release -p wasmpod-shim

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## unit tests (no root needed)
	$(CARGO) test --workspace --exclude wasmpod-e2e

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

test: lint unit chart-test e2e installer-live ## everything CI runs (root): lint, unit, chart, end-to-end, installer on live containerd

demo: ## set up the test bed and run a Wasm pod through containerd's CRI (root)
	bash e2e/demo.sh

bench: ## start-up and memory figures for wasmpod vs runc on this machine (root)
	bash e2e/bench.sh

clean: ## remove build output (the test bed cache in /var/tmp/wasmpod-testbed stays)
	$(CARGO) clean
