# wasmpod: `make help` lists the targets. Everything that needs root (containerd, mounts)
# says so; the test bed installs what it needs on Debian 12.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help build release lint unit e2e test demo bench clean

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

test: lint unit e2e ## everything CI runs: lint, unit tests, end-to-end tests (root)

demo: ## set up the test bed and run a Wasm pod through containerd's CRI (root)
	bash e2e/demo.sh

bench: ## start-up and memory figures for wasmpod vs runc on this machine (root)
	bash e2e/bench.sh

clean: ## remove build output (the test bed cache in /var/tmp/wasmpod-testbed stays)
	$(CARGO) clean
