# podwire: the verbs a person types. Privileged targets (test, demo, bench) need root.
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
PAUSE := target/pause/pause
PAUSE_IMAGE := out/pause-image.tar
PAUSE_REF ?= localhost/podwire/pause:$(VERSION)

# Debian packages the project drives or measures against.
DEB_PKGS := iproute2 iptables nftables conntrack runc busybox-static catatonit containernetworking-plugins \
	podman netavark containerd protobuf-compiler util-linux procps psmisc file binutils tar gzip hyperfine

.PHONY: all build pause pause-image test unit-test privileged-test demo bench stress lint fmt deps install clean fuzz-smoke fuzz-tools

all: build

## build: every binary (debug, for tests; the CRI client needs protoc) and the static pause
build: pause
	$(CARGO) build --workspace --bins

## pause: the no_std static pause binary (its own profile: panic=abort, static, no libc)
pause:
	$(CARGO) rustc -p pause --bin pause --profile pause --features bin -- -C relocation-model=static
	@ls -l $(PAUSE)

## pause-image: a one-layer OCI image archive holding only /pause
pause-image: pause
	pause/mk-image.sh $(PAUSE) $(PAUSE_REF) $(PAUSE_IMAGE)

## test: unit tests, then privileged tests (root) against the real kernel and runtimes
test: deps build unit-test privileged-test

unit-test:
	$(CARGO) test
	$(CARGO) test --manifest-path fuzz/Cargo.toml

privileged-test:
	@if [ "$$(id -u)" != 0 ]; then echo "make test: the privileged tests need root" >&2; exit 1; fi
	$(CARGO) test -p podwire-tests

## demo: the Kubernetes networking walkthrough, live, inside throwaway namespaces
##       (DEMO_ARGS=--quiet, --json, --color=always|never)
demo: deps build
	@if [ "$$(id -u)" != 0 ]; then echo "make demo needs root" >&2; exit 1; fi
	@target/debug/podwire-demo $(DEMO_ARGS)

## bench: benchmarks (root); figures go to BENCHMARKS.md by hand, with the method
bench: deps pause
	$(CARGO) build --release -p podwire-bench
	$(CARGO) build --release -p runtime-shim -p iptables-gen
	@echo "## pause"; target/release/pause-bench --pause $(PAUSE) --catatonit /usr/bin/catatonit
	@echo; echo "## runtime-shim"; target/release/shim-bench --shim target/release/runtime-shim --pods 50 --scale 1000
	@echo; echo "## runtime-shim routes: host-gw vs vxlan"; target/release/overlay-bench --mib 512 --runs 5
	@echo; echo "## iptables-gen"; echo "| services | lines | full gen ms (best) | full gen ms (median) | peak RSS MiB | 1-service partial sync ms (resourceVersion) | same, content digests | iptables-restore apply ms |"; echo "|---|---:|---:|---:|---:|---:|---:|---:|"
	@target/release/gen-bench --services 1000 --apply; target/release/gen-bench --services 10000; target/release/gen-bench --services 50000
	@echo; echo "## iptables-gen: full apply by backend (one run; capped at 60 s)"; target/release/nft-bench --services 1000,3000,10000 --cap 60 --chart bench/nft-apply.svg
	@echo; echo "## iptables-gen: data plane, new connections per second to a VIP"; target/release/dataplane-bench --services 10,10000
	@echo; echo "## iptables-gen --watch: one endpoint change, event to applied"; target/release/watch-bench --services 10000 --changes 30
	@echo; echo "## iptables-gen one-shot from a kubectl List, beside json.load"; target/release/oneshot-bench --services 1000,10000,50000 --runs 3

## fuzz-smoke: every cargo-fuzz target for FUZZ_SECONDS (20) each, from the seeds and saved
##             crashes; stable toolchain, so no sanitizer (-s none: the fuzzed crates forbid unsafe)
FUZZ_TARGETS := cni_request oci_state join_rewrite iptables_gen
FUZZ_SECONDS ?= 20
CARGO_FUZZ_VERSION := 0.13.2
fuzz-tools:
	@cargo fuzz --version 2>/dev/null | grep -q ' $(CARGO_FUZZ_VERSION)$$' || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)

fuzz-smoke: fuzz-tools
	$(CARGO) fuzz build -s none
	@mkdir -p fuzz/logs; for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; dirs="fuzz/corpus/$$t fuzz/seeds/$$t"; \
	  [ -d fuzz/regressions/$$t ] && dirs="$$dirs fuzz/regressions/$$t"; \
	  if ! $(CARGO) fuzz run -s none $$t $$dirs -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	      -rss_limit_mb=2048 -dict=fuzz/dicts/$$t.dict -print_final_stats=1 >fuzz/logs/$$t.log 2>&1; then \
	    tail -n 40 fuzz/logs/$$t.log; \
	    echo "fuzz-smoke: $$t FAILED; once fixed, keep the artifact in fuzz/regressions/$$t/" >&2; exit 1; \
	  fi; \
	  echo "fuzz-smoke: $$t ok, $$(grep -a '^stat::number_of_executed_units' fuzz/logs/$$t.log | grep -o '[0-9]*') runs in $(FUZZ_SECONDS)s, $$(grep -ao 'cov: [0-9]*' fuzz/logs/$$t.log | tail -n1)"; \
	done

## stress: iptables-gen at 50k services x 10 endpoints, applied in a throwaway namespace and
##         partially re-synced 20 times (root; ~6 min; iptables-legacy: the nf_tables
##         backend takes hours at this size here, see BENCHMARKS.md)
STRESS_RESTORE ?= iptables-legacy-restore
stress: deps
	$(CARGO) build --release -p podwire-bench --bin gen-bench
	target/release/gen-bench --services 50000 --apply --restore $(STRESS_RESTORE) --resyncs 20

## lint: formatting and clippy, warnings are errors (pause's binary is linted on its own)
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p pause --bin pause --profile pause --features bin -- -D warnings
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## deps: install the Debian packages that are missing (idempotent; root)
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "deps: all present"; fi

## install: binaries to $(PREFIX)/bin, podman hook files to $(PREFIX)/share/podwire/hooks.d
##          (the CNI plugin dir and the network config are set up per docs/runtime-shim.md)
install: pause
	$(CARGO) build --release -p netns -p runtime-shim -p iptables-gen --bins
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/podwire/hooks.d
	install -m 0755 $(PAUSE) $(DESTDIR)$(PREFIX)/bin/pause
	install -m 0755 target/release/netns target/release/runtime-shim target/release/iptables-gen $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 runtime-shim/hooks.d/*.json $(DESTDIR)$(PREFIX)/share/podwire/hooks.d/

clean:
	$(CARGO) clean
	rm -rf out
