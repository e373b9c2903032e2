# keyvault: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The compiled core is part of the product: a failed compile fails the build.
export KEYVAULT_REQUIRE_EXTENSIONS ?= 1

SOURCES := $(shell find keyvault cli -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi') setup.py pyproject.toml

.PHONY: all install demo test test-pure bench clean

all: install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps --force-reinstall .
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/keyvault demo

# `pytest` (not `python -m pytest`) so the installed package is tested, not the source tree.
test: install
	$(BIN)/pytest

# The same suite on the pure-Python path (CI runs both).
test-pure: install
	KEYVAULT_REQUIRE_EXTENSIONS=0 KEYVAULT_NO_EXTENSIONS=1 $(BIN)/pytest

bench: install
	$(BIN)/pytest benchmarks --benchmark-only

clean:
	rm -rf $(VENV) build dist *.egg-info keyvault/_fast/_core.c keyvault/_fast/*.so
