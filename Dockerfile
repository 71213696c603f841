# Production image: the worker only (no embedded dev stack), non-root, exec-form entrypoint
# so SIGTERM reaches Python and the worker drains its batch in flight.
FROM python:3.12-slim AS build
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY worker ./worker
RUN uv sync --locked --no-dev --no-editable

FROM python:3.12-slim
RUN useradd --uid 10001 --create-home gpm
COPY --from=build /app/.venv /app/.venv
USER 10001
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
ENTRYPOINT ["gpm"]
CMD ["run"]
