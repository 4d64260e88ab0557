# The two commands of the README: `make demo` and `make test`.  Each sets up
# what it needs: Debian packages (scripts/ensure-deps.sh), a virtualenv in
# .venv, and the package with its test extras built from this tree.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := $(shell find csrc src -type f) CMakeLists.txt pyproject.toml

.PHONY: demo test deps install clean

demo: install
	$(VENV)/bin/fastivc demo

test: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -rs tests

install: $(VENV)/.installed

deps:
	scripts/ensure-deps.sh

$(PY): | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(PY) $(SOURCES) | deps
	$(PY) -m pip install -q '.[test]'
	touch $@

clean:
	rm -rf build $(VENV) .pytest_cache
