# Developer entry points. Everything runs in .venv, created by `make setup`.
PY        := .venv/bin/python
PYTEST    := $(PY) -m pytest
COMFY_DIR := .cache/comfyui
UI_HOME   := .cache/comfy-home
UI_HOST   ?= 127.0.0.1
UI_PORT   ?= 8188
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-quick test-unit test-integration demo ui bench lint format

help:
	@echo "make setup             create .venv and fetch ComfyUI into $(COMFY_DIR) (idempotent)"
	@echo "make test              unit + integration tests (PYTEST_ARGS='-k foo' to filter)"
	@echo "make test-quick        make test without the tests marked slow (CI runs them all)"
	@echo "make test-unit         unit tests only, no ComfyUI server"
	@echo "make test-integration  tests against a real ComfyUI server"
	@echo "make demo              run the demo (python -m scripts.demo)"
	@echo "make ui                start ComfyUI with this pack on http://$(UI_HOST):$(UI_PORT)"
	@echo "make bench             run the benchmarks"
	@echo "make lint              ruff check"
	@echo "make format            ruff fix + format"

setup:
	@bash scripts/setup_comfyui.sh

# On a shared 2-core machine OpenMP's default spin-waiting can make torch 10-100x slower whenever a neighbour
# is busy, and purely passive waiting makes every small op wake a sleeping thread. A short spin (3,000 rounds)
# before sleeping keeps both costs small (docs/PERFORMANCE.md, "Noise"). GOMP_SPINCOUNT is read by libgomp,
# the OpenMP of torch's Linux wheels. The server inherits both.
test test-quick test-unit test-integration: export OMP_WAIT_POLICY ?= PASSIVE
test test-quick test-unit test-integration: export GOMP_SPINCOUNT ?= 3000

test: setup
	$(PYTEST) $(PYTEST_ARGS)

# The few tests that train for minutes to prove a property are marked slow; CI runs `make test`, which has them.
test-quick: setup
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# --ignore keeps the server fixtures from even loading; -m also drops tests
# marked integration that live elsewhere.
test-unit: setup
	$(PYTEST) -m "not integration" --ignore=tests/integration $(PYTEST_ARGS)

test-integration: setup
	$(PYTEST) tests/integration $(PYTEST_ARGS)

demo: setup
	$(PY) -m scripts.demo

# The pack is linked, not copied, into a persistent base directory, so edits
# show up on restart and UI settings survive between runs.
ui: setup
	@mkdir -p $(UI_HOME)/custom_nodes
	@ln -sfn "$(CURDIR)" $(UI_HOME)/custom_nodes/t2i_mini
	@echo "ComfyUI with Text-to-Image Mini: http://$(UI_HOST):$(UI_PORT)  (Ctrl-C to stop)"
	exec $(PY) $(COMFY_DIR)/main.py --cpu --listen $(UI_HOST) --port $(UI_PORT) \
		--base-directory "$(CURDIR)/$(UI_HOME)"

bench: setup
	$(PY) -m bench

lint:
	$(PY) -m ruff check .

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
