# Production image: the worker only (no embedded dev stack), non-root, tini as PID 1 and an
# exec-form entrypoint, so SIGTERM reaches Python and the worker drains its batch in flight.
# Pin the base by digest in your registry mirror (no registry is reachable where this is written).
FROM python:3.12.11-slim-bookworm AS build
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
# Bytecode compiled at build time: the root filesystem is read-only at run time.
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
# Dependencies first, in a layer of their own: a change to the code reuses it.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY worker ./worker
RUN uv sync --locked --no-dev --no-editable

FROM python:3.12.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home gpm
COPY --from=build /app/.venv /app/.venv
USER 10001
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["tini", "--", "gpm"]
CMD ["run"]
