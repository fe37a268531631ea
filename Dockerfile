# syntax=docker/dockerfile:1
# The ModelRollout operator image: `docker build -t modelrollout-operator:0.1.0 .`
# Two stages: the build stage installs the package (from this source tree) and its dependencies into a
# virtualenv; the runtime stage copies only that virtualenv, so no compiler, pip cache or source tree ships.
# Both stages use the same base image, so the virtualenv's interpreter path is valid in the second.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/modelrollout
WORKDIR /src
# pyproject.toml names README.md as the long description, so the build needs it.
COPY pyproject.toml README.md ./
COPY operator ./operator
# A regular (non-editable) install of the runtime dependencies only: the runtime stage must not depend on
# /src, and the operator needs none of the dev environment. `run --help` proves the entry point imports.
RUN /opt/modelrollout/bin/pip install --upgrade pip \
 && /opt/modelrollout/bin/pip install /src \
 && /opt/modelrollout/bin/modelrollout run --help > /dev/null

FROM ${PYTHON_IMAGE}
# A fixed numeric uid/gid: the Deployment's runAsNonRoot is checked against it without a passwd lookup.
RUN groupadd --system --gid 10001 modelrollout \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin modelrollout
COPY --from=build /opt/modelrollout /opt/modelrollout
ENV PATH=/opt/modelrollout/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /tmp
# 8080: kopf's liveness endpoint (/healthz); 9090: the operator's own /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["modelrollout", "run"]
