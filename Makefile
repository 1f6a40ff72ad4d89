# embedpipe developer targets. The README names `make demo` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# On machines without an NVIDIA GPU the CPU build of torch is installed first, so the unpinned
# `torch` dependency is already satisfied and pip does not pull a multi-GB CUDA build. Point
# TORCH_INDEX at https://download.pytorch.org/whl/cpu where PyPI's default torch is a CUDA build.
TORCH_CPU   ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup setup-dev browser demo test test-fast lint typecheck docs bench clean

# The runtime and the one extra the demo needs: fast (ONNX Runtime and OpenVINO), the backends that
# model.backend=auto measures, and search's fast query path. Nothing for tests, linting, Dask or
# object storage.
setup: $(VENV)/.installed

# Everything else: the dev extras (test, lint and type-check tools, Dask, S3 server, MkDocs).
setup-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the default (CUDA) torch"; \
	else \
		echo "no NVIDIA GPU: installing the CPU build of torch first ($(TORCH_CPU))"; \
		$(PIP) install --quiet "$(TORCH_CPU)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PIP) install --quiet -e ".[fast]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet -e ".[dev]"
	touch $@

# First command of the README: set up and run the main job on the bundled sample corpus.
demo: setup
	$(VENV)/bin/embedpipe run examples/corpus --golden examples/quality/golden.jsonl
	$(VENV)/bin/embedpipe search "how do vector indexes trade recall for speed" -k 3

# Debian's Chromium and ChromeDriver for the dashboard's browser test (root or sudo needed once).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "chromium and chromedriver present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	elif command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
		echo "cannot install chromium (not root, no sudo): the browser test will be skipped"; \
	fi

# Second command of the README, and what .ci/run calls.
test: setup-dev browser
	$(PY) -m pytest -q

# The inner loop: tests/unit only (no Prefect server, no whole runs, no browser install).
test-fast: setup-dev
	$(PY) -m pytest -q tests/unit

lint: setup-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: setup-dev
	$(VENV)/bin/mypy

# The docs/ pages as a site in site/ (tests/unit/test_docs.py builds the same with --strict).
docs: setup-dev
	$(VENV)/bin/mkdocs build --strict

bench: setup-dev
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/backends.py
	$(PY) benchmarks/scaleout.py
	$(PY) benchmarks/incremental.py
	$(PY) benchmarks/checks.py
	$(PY) benchmarks/calibration.py

clean:
	rm -rf .embedpipe .pytest_cache test-artifacts site
