# syntax=docker/dockerfile:1
# The pgjit operator image. Build:  docker build -t ghcr.io/pgjit/pgjit:$(version) .
#
# The builder turns the source into a wheel and installs it with its dependencies into a
# virtualenv; the final image gets only that virtualenv on a plain python:3.11-slim, so no
# compiler, pip cache or source tree ships. Every dependency (psycopg[binary], cryptography,
# pydantic-core) comes as a manylinux wheel, so neither stage needs build tools.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/pgjit \
 && /opt/pgjit/bin/pip install --only-binary=:all: /wheels/*.whl \
 && /opt/pgjit/bin/pgjit --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="pgjit" \
      org.opencontainers.image.description="Just-in-time PostgreSQL users for Kubernetes" \
      org.opencontainers.image.source="https://github.com/pgjit/pgjit" \
      org.opencontainers.image.licenses="Apache-2.0"
# Same base image as the builder, so the venv's interpreter symlinks resolve unchanged.
COPY --from=builder /opt/pgjit /opt/pgjit
ENV PATH=/opt/pgjit/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so the kubelet can verify runAsNonRoot without an /etc/passwd entry (the chart's
# pod securityContext uses the same ID).
USER 65532:65532
ENTRYPOINT ["pgjit"]
CMD ["run"]
