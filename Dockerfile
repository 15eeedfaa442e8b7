# syntax=docker/dockerfile:1
# slipway serve: a CPU image for KServe (deploy/README.md). Only what serving needs: the core dependencies of
# pyproject.toml (onnxruntime, aiohttp, grpcio, tritonclient, ...), no torch, no dev tools.
#
#   docker build -t slipway:0.1.0 .                                  # onnxruntime only
#   docker build -t slipway:0.1.0-openvino --build-arg EXTRAS=openvino .   # + OpenVINO (EXTRAS: openvino, edge or openvino,edge)
#
# Reproducible builds: pin the base image by digest (--build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: the slipway wheel (the source tree never reaches the runtime image) ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY slipway ./slipway
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime ----
FROM ${PYTHON_IMAGE}
ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/slipway \
    PATH=/opt/slipway/bin:$PATH \
    HOME=/home/slipway \
    SLIPWAY_CACHE=/home/slipway/.cache/slipway

# a numeric non-root user: Kubernetes' runAsNonRoot can only verify a numeric USER
RUN groupadd --gid 1000 slipway \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/slipway --shell /usr/sbin/nologin slipway

COPY --from=build /wheels /wheels
RUN set -eu; \
    for extra in $(echo "$EXTRAS" | tr ',' ' '); do \
        case "$extra" in openvino|edge) ;; *) echo "EXTRAS: unknown extra '$extra' (openvino, edge)" >&2; exit 1 ;; esac; \
    done; \
    wheel=$(ls /wheels/slipway-*.whl); \
    python -m venv /opt/slipway; \
    pip install "${wheel}${EXTRAS:+[$EXTRAS]}"; \
    rm -rf /wheels; \
    slipway serve --help > /dev/null

USER 1000:1000
WORKDIR /home/slipway

# KServe's conventions: the storage initializer puts the model repository at /mnt/models; HTTP (REST) on 8080,
# gRPC (h2c) on 8081, Prometheus /metrics on 8082 (also served on the HTTP port)
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2)"]

ENTRYPOINT ["slipway"]
CMD ["serve", "/mnt/models", "--host", "0.0.0.0", "--http-port", "8080", "--grpc-port", "8081", "--metrics-port", "8082", "--model-control-mode", "none"]
