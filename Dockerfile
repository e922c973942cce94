# The service image: the BentoML service over the champion ONNX graph (no torch inside).
#
#   docker build -t mlcycle .                                   # CPU onnxruntime
#   docker build -t mlcycle-gpu --build-arg ONNXRUNTIME="onnxruntime-gpu[cuda,cudnn]" .
#   docker run -p 3000:3000 -v "$PWD/registry:/app/registry:ro" -v mlcycle-log:/app/log mlcycle
#   (the GPU image: add --gpus all; onnxruntime then runs the graph with CUDA)
#
# The champion is mounted (registry/, as `make repro` leaves it), so a promotion on the host is
# picked up by the running container's hot reload; the production log lives in the /app/log
# volume (or set MLCYCLE_LOG_URL to a PostgreSQL URL shared by replicas).
# The browser page's runtime: onnxruntime-web as serving/web/package-lock.json pins it (the
# wasm-only build and its gzip copies, serving/web/vendor.mjs), shipped in the image, no CDN.
FROM node:20-slim AS web
WORKDIR /web
COPY serving/web/package.json serving/web/package-lock.json serving/web/vendor.mjs ./
RUN npm ci --ignore-scripts --no-audit --no-fund && node vendor.mjs

FROM python:3.11-slim AS builder
ARG ONNXRUNTIME=onnxruntime
WORKDIR /build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock pyproject.toml README.md ./
COPY pipeline/__init__.py pipeline/
COPY pipeline/contracts/ pipeline/contracts/
COPY serving/ serving/
# Only what serving imports (the torch-free pipeline/contracts/ and serving/), at the versions of
# requirements.lock; the project without its training dependencies (torch, mlflow, dvc).
RUN grep -v "^onnxruntime==" requirements.lock > constraints.txt \
    && pip install --no-cache-dir -c constraints.txt \
        bentoml numpy pandas pyyaml pydantic orjson sqlalchemy "psycopg[binary]" "${ONNXRUNTIME}" \
    && pip install --no-cache-dir --no-deps .

FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BENTOML_HOME=/app/.bentoml \
    BENTOML_DO_NOT_TRACK=true \
    MLCYCLE_PARAMS=/app/params.yaml \
    MLCYCLE_REGISTRY=/app/registry \
    MLCYCLE_LOG_URL=/app/log/production.db \
    MLCYCLE_SPILL_DIR=/app/log/spill
RUN groupadd --system --gid 10001 mlcycle \
    && useradd --system --uid 10001 --gid mlcycle --home-dir /app --no-create-home mlcycle \
    && mkdir -p /app/log /app/registry /app/.bentoml \
    && chown -R mlcycle:mlcycle /app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --chown=mlcycle:mlcycle params.yaml ./
COPY --chown=mlcycle:mlcycle pipeline/__init__.py pipeline/
COPY --chown=mlcycle:mlcycle pipeline/contracts/ pipeline/contracts/
COPY --chown=mlcycle:mlcycle serving/ serving/
COPY --from=web --chown=mlcycle:mlcycle /web/vendor/ serving/web/vendor/
USER 10001:10001
VOLUME ["/app/log"]
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=2)"]
CMD ["python", "-m", "serving", "--host", "0.0.0.0", "--port", "3000"]
