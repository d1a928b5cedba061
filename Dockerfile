# syntax=docker/dockerfile:1
# The images of rlhf-operator (docs/cluster-quickstart.md):
#   docker build --target operator -t rlhf-operator:dev .                            # control plane, no torch
#   docker build --target trainer -t rlhf-trainer:dev .                              # stage pods, CUDA PyTorch
#   docker build --target trainer --build-arg TORCH=cpu -t rlhf-trainer:dev-cpu .    # stage pods on CPU (kind)
# Every Python package at the version in constraints.txt, the set the tests ran with (torch included).
ARG PYTHON_VERSION=3.11
# cuda: PyPI's build of torch, with its CUDA libraries (the node's NVIDIA driver does the rest);
# cpu: PyTorch's CPU build (no GPU, several GB smaller). Both are constraints.txt's torch version.
ARG TORCH=cuda

# The project as a wheel: sources and build tools stay out of the final images.
FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer_image ./trainer_image
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .


# The operator: slim Python with the [operator] extra only.
FROM python:${PYTHON_VERSION}-slim AS operator
LABEL org.opencontainers.image.title="rlhf-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs RLHF pipelines (SFT, reward model, DPO, PPO, GRPO) as Jobs" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /tmp/constraints.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --constraint /tmp/constraints.txt "$(echo /wheels/*.whl)[operator]"
# The UID the chart's pod securityContext runs as (charts/rlhf-operator/values.yaml).
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rlhf
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["rlhf", "operator"]


# torch for the trainer, chosen by --build-arg TORCH (only the chosen one is built).
FROM python:${PYTHON_VERSION}-slim AS torch-cuda
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir --constraint /tmp/constraints.txt torch

FROM python:${PYTHON_VERSION}-slim AS torch-cpu
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu --constraint /tmp/constraints.txt torch


# The trainer: every stage pod runs `python -m rlhf_trainer.stage /etc/rlhf/stage.json` with the workspace PVC at
# /workspace. Model and dataset caches live on that PVC, so later stages and retries reuse what was downloaded.
# checkov:skip=CKV_DOCKER_7: torch-${TORCH} names a stage of this file, whose FROM has a version tag
# hadolint ignore=DL3006
FROM torch-${TORCH} AS trainer
LABEL org.opencontainers.image.title="rlhf-trainer" \
      org.opencontainers.image.description="Stage runner of rlhf-operator: SFT, reward modelling, DPO, PPO and GRPO" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/workspace \
    XDG_CACHE_HOME=/workspace/.cache \
    HF_HOME=/workspace/.cache/huggingface \
    TORCHINDUCTOR_CACHE_DIR=/workspace/.cache/torchinductor \
    TRITON_CACHE_DIR=/workspace/.cache/triton \
    MPLCONFIGDIR=/workspace/.cache/matplotlib
# torch is already the constrained version (either build), so pip keeps it.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --constraint /tmp/constraints.txt "$(echo /wheels/*.whl)[trainer]" \
    && rm /tmp/constraints.txt
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# UID/GID 1000: the runAsUser and fsGroup the operator gives stage pods, so the workspace PVC is writable.
# A base image may already have a user 1000 (Ubuntu 24.04 has "ubuntu"): it makes way for ours.
RUN if getent passwd 1000 >/dev/null; then userdel --remove "$(getent passwd 1000 | cut -d: -f1)"; fi \
    && if getent group 1000 >/dev/null; then groupdel "$(getent group 1000 | cut -d: -f1)"; fi \
    && groupadd --gid 1000 rlhf \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /workspace --shell /bin/bash rlhf \
    && mkdir -p /workspace \
    && chown 1000:1000 /workspace
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["python", "-m", "rlhf_trainer.stage"]
