# CardLink: `make run` brings the system up, `make test` runs the tests.
# Everything runs from a private virtualenv built from requirements.lock.

# python3.11 where it exists, else python3 (checked to be 3.11+ below).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
# mypy refuses a folder with no Python in it; gateway/ fills in with issue 5.
MYPY_DIRS := $(foreach d,common vault gateway clients tests scripts,$(if $(wildcard $(d)/*.py),$(d)))

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: all venv protos check-protos lint test run demo bench clean

all: test

$(STAMP): requirements.lock pyproject.toml
	@"$(PYTHON)" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
	  { echo "CardLink needs Python 3.11+; run: make PYTHON=/path/to/python3.11 ..."; exit 1; }
	"$(PYTHON)" -m venv $(VENV)
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
	$(BIN)/mypy $(MYPY_DIRS)
	$(PY) scripts/buflint.py

test: $(STAMP) check-protos
	$(PY) -m pytest -n auto -q $(PYTEST_ARGS)

run: $(STAMP) check-protos
	$(PY) -m common.devstack

demo: $(STAMP) check-protos
	@$(PY) -c 'import sys; from common.devstack import module_available as m; sys.exit(not m("clients.demo"))' || \
	  { echo "make demo arrives with issue 5 (gateway, bank simulator, partner SDK)"; exit 1; }
	$(PY) -m clients.demo

bench: $(STAMP) check-protos
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) .bench build *.egg-info
