# The load generator's image (compose profile `load`, docs/load.md): Locust and the shop
# scenario of tools/load, installed from uv.lock. Build context: the repository root.
#   docker build -f deploy/load.Dockerfile -t mini-ec-load .
# Its own Dockerfile: it is no service (no database, broker or port of the contract) and
# needs nothing of libs/.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# Third-party dependencies first: this layer is rebuilt only when the lock or a manifest changes.
COPY pyproject.toml uv.lock ./
COPY tools/load/pyproject.toml tools/load/
RUN uv sync --frozen --no-dev --no-default-groups --package load --no-install-workspace
COPY tools/load tools/load
RUN uv sync --frozen --no-dev --no-default-groups --package load --no-editable

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app \
 && mkdir -p /app && chown app /app
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER app
EXPOSE 8089
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8089/', timeout=2)"]
# The web UI, on every interface of the container (compose publishes it on 127.0.0.1 only);
# compose adds the services' addresses.
CMD ["python", "-m", "load", "--web", "--web-host", "0.0.0.0"]
