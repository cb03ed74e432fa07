# syntax=docker/dockerfile:1
# One image, both roles:
#   docker run IMAGE                          -> ringez-worker serve  (the `web` process, :8000)
#   docker run IMAGE ringez-worker worker     -> the arq worker       (metrics on :9100)
# Give either `--stop-timeout 30` (Compose: stop_grace_period, Kubernetes:
# terminationGracePeriodSeconds) so SHUTDOWN_GRACE_SECONDS (25 s) can run out first.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a source change does not reinstall them.
COPY pyproject.toml README.md ./
RUN dirs="ringez_worker ringez_worker/api handlers agents report worker worker/console sandbox" \
    && for d in $dirs; do mkdir -p $d && touch $d/__init__.py; done \
    && pip install ".[fast,report,otel]" \
    && pip uninstall -y ringez-agent-worker
# Then the project itself (not editable; no test extra).
COPY ringez_worker ./ringez_worker
COPY worker ./worker
COPY handlers ./handlers
COPY agents ./agents
COPY sandbox ./sandbox
COPY report ./report
# pip stays in /opt/venv: an image built FROM this one installs its handler package there.
RUN pip install --no-deps . && ringez-worker --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ringez-agent-worker" \
      org.opencontainers.image.description="Signed Ringez webhooks -> Redis -> arq workers and agents" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 ringez \
    && useradd --system --uid 10001 --gid ringez --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin ringez
COPY --from=build /opt/venv /opt/venv
COPY deploy/healthcheck.py /usr/local/bin/ringez-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json \
    HOST=0.0.0.0 \
    PORT=8000 \
    WORKER_METRICS_PORT=9100
# No .env in the image: configuration comes from the environment (see .dockerignore).
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000 9100
# Liveness for either role: /healthz on PORT (receiver) or WORKER_METRICS_PORT (worker).
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "/usr/local/bin/ringez-healthcheck"]
# Exec form: the Python process is PID 1 and gets SIGTERM itself (aiohttp and arq both
# handle it: the receiver finishes in-flight requests, the worker stops taking jobs).
CMD ["ringez-worker", "serve"]
