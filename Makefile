# reelrec: the two commands a new user runs are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ./reelrec-data

.PHONY: demo test install install-test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/reelrec demo --data $(DATA)

test: install-test
	$(BIN)/python -m pytest -q

bench: install-test
	$(BIN)/python -m benchmarks.run $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache
