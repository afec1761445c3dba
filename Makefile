# Quiver: `make serve` runs the server, `make test` runs every check. Both install from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
# hnswlib is always compiled here, with its own -march=native flags (AVX where the CPU has it).
PIP_BUILD := --no-binary hnswlib
PROTOS := $(wildcard protos/quiver/v1/*.proto)
GEN_DIR := client

.PHONY: install dev serve test lint typecheck buf-lint buf-breaking proto proto-check pytest node-deps bench soak clean

$(VENV)/.runtime: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(PIP_BUILD) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) $(PIP_BUILD) -e '.[dev]'
	touch $@

install: $(VENV)/.runtime
dev: $(VENV)/.dev

serve: install
	$(VENV)/bin/quiver serve

test: dev lint typecheck buf-lint buf-breaking proto-check node-deps pytest

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: dev
	$(VENV)/bin/mypy

buf-lint: dev
	$(VENV)/bin/buf lint

# A shipped field is never broken by accident: compare with the first commit that had the
# protos (the contract as first released).
PROTO_BASE = $(shell git log --diff-filter=A --format=%H -- protos/quiver/v1/files.proto 2>/dev/null | tail -1)
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

# Regenerate the committed stubs (python + .pyi + grpc + typed grpc stubs).
proto: dev
	rm -f $(GEN_DIR)/quiver/v1/*_pb2*.py $(GEN_DIR)/quiver/v1/*_pb2*.pyi
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=$(GEN_DIR) --mypy_out=$(GEN_DIR) \
		--grpc_python_out=$(GEN_DIR) --mypy_grpc_out=$(GEN_DIR) $(PROTOS)

# Fails when the committed stubs differ from what the protos generate.
proto-check: dev
	rm -rf .proto-check && mkdir -p .proto-check
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=.proto-check --mypy_out=.proto-check \
		--grpc_python_out=.proto-check --mypy_grpc_out=.proto-check $(PROTOS) >/dev/null
	cp $(GEN_DIR)/quiver/v1/__init__.py .proto-check/quiver/v1/
	diff -r -x __pycache__ -x py.typed .proto-check/quiver/v1 $(GEN_DIR)/quiver/v1 \
		|| (echo "committed stubs are stale: run 'make proto'" && exit 1)
	rm -rf .proto-check

pytest: dev
	$(PY) -m pytest -q

# Every benchmark: prints its figures, writes bench/results/*.json and docs/img/*.png.
# The ingest corpus wants Debian's linux-doc-6.1 (the kernel's documentation, ~31 MB of text).
bench: dev
	@test -d /usr/share/doc/linux-doc-6.1/html/_sources \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
			&& apt-get update -qq && apt-get install -y -qq linux-doc-6.1 >/dev/null; } \
		|| echo "linux-doc-6.1 is not installed: the ingest corpus will be under 50 MB"
	$(PY) -m bench.ingest --mb 50
	$(PY) -m bench.search --chunks 100000
	$(PY) -m bench.quality
	$(PY) -m bench.watchers --watchers 1000 --files 500
	$(PY) -m bench.load --clients 32 --seconds 180
	$(PY) -m bench.search_scale --sizes 10000,100000,1000000
	$(PY) -m bench.charts

# Crash loop: SIGKILL the server 20 times under load, then check nothing confirmed was lost.
soak: dev
	$(PY) -m bench.soak --kills 20

clean:
	rm -rf $(VENV) .proto-check .mypy_cache .ruff_cache .pytest_cache
