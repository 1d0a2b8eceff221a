# Two commands on a fresh machine: `make run` and `make test`. Both create .venv and install
# what is missing first (the install is redone only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.vislight-installed
# Exact torch/torchvision releases: a bare `torch` may pull a multi-GB CUDA build from the index.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=

.PHONY: install run test test-all lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(TORCH_PINS)
	$(PIP) install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: install
	$(PY) -m vislight $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q $(ARGS)

test-all: lint
	$(PY) -m pytest -q -m "" $(ARGS)

clean:
	rm -rf outputs .pytest_cache .ruff_cache
