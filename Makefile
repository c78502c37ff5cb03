# Two commands do all the set-up: `make demo` and `make test`. Each installs what it needs,
# idempotently: a virtualenv in .venv (stamped, so a second run is fast) and WordNet 3.0 from
# Debian's packages.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.dev-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
WORDNET_FILE := /usr/share/wordnet/data.noun
CHROMIUM := /usr/bin/chromium

.PHONY: install install-dev wordnet browser test lint demo clean

install: $(STAMP) wordnet

# The tests' own tools (pytest, ruff, datasets, notebooks, a browser for the gallery's test):
# `make test` only, not `make demo`.
install-dev: $(DEV_STAMP) wordnet browser

$(STAMP): pyproject.toml
	@$(PYTHON) --version >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch and torchvision are pinned (torch==2.14.1, torchvision==0.29.1) in pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

wordnet:
	@if [ -f $(WORDNET_FILE) ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "error: WordNet 3.0 is missing and apt-get is not available;"; \
		echo "       install WordNet 3.0 and point NLTK_DATA at it (see README)"; exit 2; fi; \
	$(SUDO) apt-get update -qq && \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		wordnet-base wordnet-sense-index

# Debian's Chromium: the gallery (augment view) is tested in a real headless browser.
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "error: Chromium is missing and apt-get is not available; install chromium"; exit 2; fi; \
	$(SUDO) apt-get update -qq && \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium

lint: $(DEV_STAMP)
	$(BIN)/ruff check augment tests analysis scripts
	$(BIN)/ruff format --check augment tests analysis scripts

# Two pytest processes, a test file each at a time (pytest-xdist): one test alone keeps about
# 70 % of one core busy (Ray start-ups, subprocesses, servers waiting), so two in parallel
# finish the suite in about three quarters of the time on 2 cores.
test: install-dev lint
	$(BIN)/python -m pytest tests -n 2 --dist loadfile

demo: install
	$(BIN)/augment demo --out out/demo

clean:
	rm -rf out .pytest_cache
