# Two entry points: `make demo` (install everything, train a short run) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP  := $(VENV)/.installed

.PHONY: install system-deps demo test test-slow test-hosts test-check lint clean

install: $(STAMP)

# Debian/Ubuntu: the official Fashion-MNIST files come as a package (elsewhere cnnlab downloads them), and
# Chromium + chromedriver for the browser test of the HTML reports.
system-deps:
	sh scripts/install-browser.sh
	@if command -v apt-get >/dev/null 2>&1 && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; fi
	@# ip (network namespaces) and pgrep: the two-host torchrun tests (make test-hosts)
	@if command -v apt-get >/dev/null 2>&1 && ! (command -v ip && command -v pgrep) >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq iproute2 procps; fi
	@# PostgreSQL: the study two hosts share in tests/test_tune_hosts.py (make test-hosts)
	@if command -v apt-get >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql; fi

# torch is installed on its own, pinned: an unpinned resolve pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(MAKE) system-deps
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/cnnlab fashion train --recipe seed-a --epochs 3 --out runs/demo-fashion-$$(date +%Y%m%d-%H%M%S)

# Two workers: most tests run one core's worth of Python (figures, decoding, start-up), so two halve the wait.
test: install
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n 2

test-slow: install
	$(BIN)/pytest -q -m slow

# torchrun over two hosts made of network namespaces (root): about 4 minutes, so not in `make test`; CI runs it.
test-hosts: install
	$(BIN)/pytest -q -m slow tests/test_two_hosts.py tests/test_tune_hosts.py tests/test_tune.py

# `cnnlab check` on the whole facade and Fashion-MNIST sets (about 2 minutes on 2 cores); CI runs it.
test-check: install
	$(BIN)/pytest -q -m slow tests/test_check.py

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
