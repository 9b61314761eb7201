# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test demo bootstrap lint build unit bench

bootstrap:
	./scripts/bootstrap.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Binaries are built once; the integration tests run them from target/debug.
build:
	$(CARGO) build --workspace --bins

test: bootstrap lint build
	$(CARGO) test --workspace --no-fail-fast

demo: bootstrap
	$(CARGO) build --release --workspace --bins
	./target/release/wren-lab demo

bench: bootstrap
	./scripts/bench.sh
