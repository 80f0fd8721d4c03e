# CardLink: `make run` brings the system up, `make test` runs the tests.
# Everything runs from a private virtualenv built from requirements.lock.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: all venv protos check-protos lint test run demo bench clean

all: test

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

protos: $(STAMP)
	$(PY) scripts/genprotos.py

check-protos: $(STAMP)
	$(PY) scripts/genprotos.py --check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy common vault gateway clients tests scripts
	$(PY) scripts/buflint.py

test: $(STAMP) check-protos
	$(PY) -m pytest -n auto -q $(PYTEST_ARGS)

run: $(STAMP) check-protos
	$(PY) -m common.devstack

bench: $(STAMP) check-protos
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) .bench build *.egg-info
