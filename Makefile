# One entry point for people and CI: `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
TOOLS := .tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
export UV_LINK_MODE := copy
# llama.cpp compiles from source on first install; use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: run test lint bench chaos sync uv

uv:
	@if ! command -v $(UV) >/dev/null 2>&1; then \
		echo "==> installing uv (the workspace's package manager) into $(TOOLS)/"; \
		python3 -m venv $(TOOLS) && $(TOOLS)/bin/pip install --quiet uv; \
	fi

sync: uv
	@echo "==> installing dependencies from uv.lock (first run builds llama.cpp: 3-5 minutes)"
	@$(UV) sync --frozen --all-packages --group dev

run: sync
	@$(UV) run --frozen python tools/devstack.py

test: sync
	@$(UV) run --frozen pytest

lint: sync
	@$(UV) run --frozen ruff check .
	@$(UV) run --frozen ruff format --check .
	@$(UV) run --frozen mypy libs/common services tools

bench: sync
	@$(UV) run --frozen python bench/run.py

chaos: sync
	@$(UV) run --frozen python chaos/run.py
