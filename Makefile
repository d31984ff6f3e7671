# rayft: `make quickstart` runs the whole path on the embedded default; `make test` runs the tests.
# Both create .venv and install the CPU profile from the lock file when it is missing or stale.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements/cpu.lock.txt
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# where torch's CPU build is not on a configured index or find-links.
PIP_ARGS ?=

.PHONY: install browser quickstart check test test-fast bench lock clean

install: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps -r $(LOCK) $(PIP_ARGS)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import torch, transformers, vllm, ray, deepspeed, peft"
	touch $(STAMP)

# The review page's tests drive a real headless Chromium: the system's package (Playwright's own
# browser download needs a CDN). Installed when missing; apt-get needs root (or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  $(SUDO) apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q --no-install-recommends chromium >/dev/null; }

quickstart: $(STAMP)
	$(VENV)/bin/rayft quickstart

# The rules the tools enforce come first: formatting and lint (ruff), the dependency rules
# between stages (import-linter, .importlinter); then the tests.
check: $(STAMP)
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/lint-imports --no-cache > $(VENV)/lint-imports.log || { cat $(VENV)/lint-imports.log; exit 1; }

test: check browser
	$(PY) -m pytest

# Only the tests that start no Ray, Serve or vLLM (so none of the multi-node ones either).
test-fast: check browser
	$(PY) -m pytest -m "not ray and not vllm and not multinode"

# Every bench, each measuring side by side in one run (bench/RESULTS.md records them; over an hour on
# 2 cores). BENCH_ARGS=--smoke: each at its smallest, as `make test` runs them (tests/test_bench_smoke.py).
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/data_prep.py $(BENCH_ARGS)
	$(PY) bench/train_throughput.py $(BENCH_ARGS)
	$(PY) bench/serve_throughput.py $(BENCH_ARGS)
	$(PY) bench/adapter_scale.py $(BENCH_ARGS)
	$(PY) bench/multinode.py $(BENCH_ARGS)

# Re-resolve the CPU profile in a scratch venv and write the lock file.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet $(PIP_ARGS) -e ".[cpu,dev]"
	.venv-lock/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	{ echo "# CPU profile lock (rayft[cpu,dev]) for Python 3.11 x86_64. Regenerate with 'make lock'."; \
	  echo "# Leaves out torchvision, torchaudio, torchcodec (CUDA-linked builds that break transformers' imports on CPU) and triton (GPU only)."; \
	  .venv-lock/bin/pip freeze --all --exclude-editable | grep -v -i -E "^(pip|torchvision|torchaudio|torchcodec|triton|rayft)=="; } > $(LOCK)
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .rayft .pytest_cache
