# One image for every Clarion entry point: clarion-operator, clarion-webhook, clarion-bot,
# clarion-sender (and the `clarion` developer CLI, which ships in the same wheel).
#
#   docker build -t clarion:dev .
#
# Stage 1 builds the project's wheel and installs it with its dependencies into /opt/venv.
# Stage 2 copies only that virtualenv onto a fresh copy of the base: no compiler, no pip cache, no sources.
#
# PYTHON_IMAGE is the base of both stages; it must provide Python 3.11 as `python`, `python -m venv`
# and groupadd/useradd. scripts/build-image.sh builds without Docker and passes a Debian bookworm base
# made from Debian packages (see docs/image.md).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The build tools live in a virtualenv of their own: Debian's system Python refuses `pip install`
# (PEP 668), and /opt/build stays in this stage.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install build
COPY pyproject.toml README.md ./
COPY core ./core
COPY operator ./operator
COPY services ./services
COPY devtools ./devtools
# The virtualenv gets the wheel and its dependencies only: no pip, no setuptools, no build tools.
RUN /opt/build/bin/python -m build --wheel --outdir /dist . \
 && python -m venv --without-pip /opt/venv \
 && /opt/build/bin/pip --python /opt/venv/bin/python install /dist/*.whl

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="clarion" \
      org.opencontainers.image.description="Kubernetes-native notification and broadcast platform for Telegram" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CLARION_LOG_FORMAT=json
RUN groupadd --system --gid 10001 clarion \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin clarion
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
CMD ["clarion-operator"]
