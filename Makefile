# cio — `make demo` runs cio's main job, `make test` runs every check.
# Both install what they need on a Debian 12 machine (run as root).

SHELL := /bin/bash
APT_PACKAGES := etcd-server etcd-client libnbd-bin nbdkit fio qemu-utils openssl e2fsprogs xfsprogs iproute2 util-linux nftables postgresql-15
# Commands that tell whether the apt packages above are present.
APT_PROBES := etcd etcdctl nbdinfo nbdcopy nbdfuse nbdkit fio qemu-img openssl mkfs.ext4 mkfs.xfs ip fallocate nft losetup blkid /usr/lib/postgresql/15/bin/postgres pgbench psql
NODE_TEST := node --test --test-concurrency=1 --test-reporter=spec

.PHONY: all deps apt-deps npm-deps build native lint typecheck test test-unit test-integration demo bench clean sim

all: build

deps: apt-deps npm-deps

apt-deps:
	@missing=""; for c in $(APT_PROBES); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  mkdir -p /etc/postgresql-common; \
	  [ -f /etc/postgresql-common/createcluster.conf ] || echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi

npm-deps:
	@if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then npm ci --no-audit --no-fund; fi

native: npm-deps
	@if [ -f binding.gyp ] && { [ ! -f build/Release/fsext.node ] || [ -n "$$(find src/native binding.gyp -newer build/Release/fsext.node -print -quit)" ]; }; then \
	  npm run native; fi

build: npm-deps native
	npx tsc -p tsconfig.json

lint: npm-deps
	npx eslint src test bench

typecheck: npm-deps
	npx tsc -p tsconfig.json --noEmit

# Unit tests: pure logic, no daemons. Integration tests: real etcd, agents,
# NBD clients. End-to-end suites (Docker Swarm) are separate targets.
test-unit: build
	$(NODE_TEST) $$(find dist/test -name '*.test.js' -path '*/unit/*' | sort)

test-integration: build
	$(NODE_TEST) $$(find dist/test -name '*.test.js' -not -path '*/unit/*' -not -path '*/e2e/*' | sort)

test: deps lint typecheck build
	$(NODE_TEST) $$(find dist/test -name '*.test.js' -not -path '*/e2e/*' | sort)

# The fault campaign on a real local cluster: 8 fault kinds x 10 runs under a
# writer that records every acknowledged write (about two hours); faults-short
# runs each kind once (in CI). Non-zero exit on any loss or difference.
.PHONY: faults faults-short
faults: deps build
	node dist/test/faults/campaign.js --runs 10
faults-short: deps build
	node dist/test/faults/campaign.js --runs 1

# The deterministic simulation, long form: 2000 seeds (make test runs 50).
# Replay one: SIM_SEED=N SIM_TRACE=1 node --test dist/test/sim/simulation.test.js
SIM_RUNS ?= 2000
sim: npm-deps build
	SIM_RUNS=$(SIM_RUNS) node --test --test-name-pattern='every in-sync' dist/test/sim/simulation.test.js

demo: deps build
	./scripts/demo.sh

bench: deps build
	node dist/bench/run.js
	node dist/bench/ha.js

# End-to-end: cio as the volume plugin of a real 3-host Docker Swarm built on this
# machine from namespaces and cgroups (test/e2e/swarm.sh): crash, freeze, stack.
E2E_APT_PACKAGES := docker.io busybox-static
.PHONY: e2e-swarm
e2e-swarm: deps build
	@if ! dpkg -s $(E2E_APT_PACKAGES) >/dev/null 2>&1; then \
	  echo "installing Debian packages for the Swarm e2e test: $(E2E_APT_PACKAGES)"; \
	  export DEBIAN_FRONTEND=noninteractive; norc=""; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; norc=1; fi; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $(E2E_APT_PACKAGES); rc=$$?; \
	  if [ -n "$$norc" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc; \
	fi
	./test/e2e/swarm.sh

clean:
	rm -rf dist build
