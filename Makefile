# One entry point for people and CI: `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
TOOLS := .tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
export UV
export UV_LINK_MODE := copy

.PHONY: run test lint bench chaos sync sync-run uv test-services

uv:
	@if ! command -v $(UV) >/dev/null 2>&1; then \
		echo "==> installing uv (the workspace's package manager) into $(TOOLS)/"; \
		python3 -m venv $(TOOLS) && $(TOOLS)/bin/pip install --quiet uv; \
	fi

# The product alone, for `make run`.
sync-run: uv
	@bash tools/install.sh run

# The product with the test, lint and benchmark tools.
sync: uv
	@bash tools/install.sh dev

run: sync-run
	@$(UV) run --frozen --no-sync python tools/devstack.py

# Chromium and slapd installed, PostgreSQL, Redis and NATS running: what the suite talks to.
test-services: sync
	@bash tools/test-services.sh

test: test-services
	@$(UV) run --frozen --no-sync pytest

lint: sync
	@$(UV) run --frozen --no-sync ruff check .
	@$(UV) run --frozen --no-sync ruff format --check .
	@$(UV) run --frozen --no-sync mypy libs/common services tools

bench: sync
	@$(UV) run --frozen --no-sync python bench/run.py

chaos: sync
	@$(UV) run --frozen --no-sync python chaos/run.py
