# syntax=docker/dockerfile:1
# The DSO image: the package with the exact versions of requirements.lock (the same lock
# `make setup` installs from), running as a non-root user. Every process of the Helm chart
# runs it: Ray head and workers, the job submitter, the API and the simulators.
#
#   CPU (default):  docker build -t dso:0.1.0 .
#   CUDA:           docker build --build-arg TORCH_VARIANT=cu128 -t dso:0.1.0-cuda .
#
# TORCH_VARIANT picks the PyTorch wheel index (cpu, cu126, cu128, ...). The lock pins
# torch==2.13.0, which the index's local build (2.13.0+cpu / 2.13.0+cu128) satisfies; CUDA
# wheels bring their CUDA runtime as pip packages, so only the host's NVIDIA driver is needed.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: OpenMP runtime for CoACD and scikit-image; everything else comes as wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# Install into the image's own Python (/usr/local), not a venv: KubeRay starts Ray through
# `bash -l`, whose /etc/profile resets PATH, and /usr/local/bin stays on it. The presets
# (dso/configs/*.yaml) and the embedded model (dso/assets/) are package data: the check below
# loads the default preset from the installed package, as tests/test_wheel_install.py does.
WORKDIR /opt/dso-src
COPY pyproject.toml requirements.lock README.md ./
COPY dso ./dso
RUN pip install -c requirements.lock --extra-index-url "${TORCH_INDEX_URL}" . \
    && python -c "import dso, torch, ray, mujoco; print('dso', dso.__name__, 'torch', torch.__version__, 'ray', ray.__version__)" \
    && cd / && python -c "from dso.config import load_settings; load_settings('tiny'); load_settings('configs/cluster.yaml')" \
    && rm -rf /opt/dso-src

# Non-root user; uid/gid 1000 match the Helm chart's podSecurityContext.
RUN groupadd --gid 1000 dso \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash dso
USER 1000:1000
WORKDIR /home/dso

# Ray dashboard, Ray client, Ray metrics, DSO metrics, API (the chart names them all).
EXPOSE 8265 10001 8080 9100 8000
CMD ["dso", "--help"]
