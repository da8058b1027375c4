# One image build per service: `docker build --target connector .` (router, agent-runner,
# admin-api, imsim likewise). Dependencies come from uv.lock.
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
RUN pip install --no-cache-dir uv && useradd --create-home --uid 10001 imgate
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY libs libs
COPY services services
COPY tools tools

FROM base AS slim-deps
RUN uv sync --frozen --no-dev --package imgate-connector --package imgate-router \
    --package imgate-admin-api --package imgate-imsim
ENV PATH=/app/.venv/bin:$PATH
USER imgate

FROM slim-deps AS connector
CMD ["python", "-m", "imgate_connector"]

FROM slim-deps AS router
CMD ["python", "-m", "imgate_router"]

FROM slim-deps AS admin-api
ENV ADMIN_HOST=0.0.0.0
CMD ["python", "-m", "imgate_admin"]

FROM slim-deps AS imsim
CMD ["python", "-m", "imsim", "--host", "0.0.0.0", "--port", "8790"]

# The runner carries llama.cpp and the local model; it needs a compiler to build.
FROM base AS agent-runner
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
RUN uv sync --frozen --no-dev --package imgate-agent-runner
ENV PATH=/app/.venv/bin:$PATH
USER imgate
CMD ["python", "-m", "imgate_runner"]
