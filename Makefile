# reelrec: the two commands a new user runs are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ./reelrec-data

.PHONY: demo test install install-test chromium wrk bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml setup.py src/reelrec/compose/_splice.pyx | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml setup.py src/reelrec/compose/_splice.pyx | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

# The browser tests drive Debian's Chromium (Playwright never downloads a browser here).
chromium:
	@command -v chromium >/dev/null || test -x /usr/bin/chromium || \
	  (command -v apt-get >/dev/null && (apt-get update -q && apt-get install -y -q chromium) || \
	   (echo "chromium is missing and could not be installed with apt-get: the browser tests will be skipped" >&2))

# The serving benchmark drives the API with Debian's wrk (a Python load generator stands in without it).
wrk:
	@command -v wrk >/dev/null || \
	  (command -v apt-get >/dev/null && (apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk)) || \
	   (echo "wrk is missing and could not be installed with apt-get: bench_serving uses its Python load generator" >&2))

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test chromium

# simulate (when DATA is empty), train, precompute, print two homepages, then serve on
# 127.0.0.1:8000 until Ctrl-C; e.g. make demo DEMO_ARGS="--port 8001 --no-tune"
demo: install
	$(BIN)/reelrec demo --data $(DATA) $(DEMO_ARGS)

test: install-test
	$(BIN)/python -m pytest -q

bench: install-test wrk
	$(BIN)/python -m benchmarks.run $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache
