# syntax=docker/dockerfile:1
# The pgjit operator image. Build:  docker build -t ghcr.io/pgjit/pgjit:$(version) .
#
# The builder installs exactly the dependency versions of requirements/runtime.txt (hash-pinned;
# `make lock` regenerates it together with requirements/test.txt, which `make test` installs,
# so the image runs what CI tested) and the operator's own wheel into a virtualenv; the final
# image gets only that virtualenv on a plain Python 3.11 base, so no compiler, pip cache or
# source tree ships. Every dependency (psycopg[binary], cryptography, pydantic-core) comes as a
# manylinux wheel, so neither stage needs build tools.
#
# PYTHON_IMAGE is any Debian-based image with python3.11 and venv: python:3.11-slim by default;
# the node test layer passes a bookworm rootfs made with mmdebstrap (no registry there).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/runtime.txt ./requirements/
RUN python -m venv /opt/pgjit \
 && /opt/pgjit/bin/pip install --require-hashes --only-binary=:all: -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/pgjit/bin/pip install --no-deps /wheels/*.whl \
 && /opt/pgjit/bin/pip check \
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
# A name for the runtime uid: libraries that ask the OS who they are (getpass.getuser(), which
# Kopf calls when POD_ID is unset) raise KeyError for a uid without a passwd entry.
RUN echo 'pgjit:x:65532:65532:pgjit operator:/nonexistent:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'pgjit:x:65532:' >>/etc/group
# Numeric, so the kubelet can verify runAsNonRoot (the chart's pod securityContext uses the
# same ID).
USER 65532:65532
ENTRYPOINT ["pgjit"]
CMD ["run"]
