# Every service's image: one Dockerfile, the service and its port given as build args
# (docker-compose.yml passes them, the port from .env). Build context: the repository root.
#   docker build -f deploy/service.Dockerfile --build-arg SERVICE=points --build-arg PORT=8001 -t mini-ec-points .
# Only that service's and libs/messaging's dependencies are installed, from uv.lock (no dev tools).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# Declared after the uv layer, so that layer is shared by every service's build.
ARG SERVICE
ARG PORT
# Where the package lives: services/ (a service), or apps/ (the console).
ARG SOURCE_DIR=services
# Without them the image would have no package to install or no port to serve: stop here.
RUN test -n "$SERVICE" && test -n "$PORT" \
 || { echo "build args SERVICE and PORT are required (--build-arg SERVICE=points --build-arg PORT=8001)" >&2; exit 1; }
# Third-party dependencies first: this layer is rebuilt only when the lock or a manifest changes.
COPY pyproject.toml uv.lock ./
COPY libs/contracts/pyproject.toml libs/contracts/
COPY libs/messaging/pyproject.toml libs/messaging/
COPY ${SOURCE_DIR}/${SERVICE}/pyproject.toml ${SOURCE_DIR}/${SERVICE}/
RUN uv sync --frozen --no-dev --no-default-groups --package ${SERVICE} --no-install-workspace
# Then the code, installed as ordinary packages so the runtime image needs no source tree.
COPY libs/contracts libs/contracts
COPY libs/messaging libs/messaging
COPY ${SOURCE_DIR}/${SERVICE} ${SOURCE_DIR}/${SERVICE}
RUN uv sync --frozen --no-dev --no-default-groups --package ${SERVICE} --no-editable

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app \
 && mkdir -p /app/var && chown app /app/var
COPY --from=build /app/.venv /app/.venv
ARG SERVICE
ARG PORT
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=${PORT} \
    SERVICE=${SERVICE}
WORKDIR /app
USER app
EXPOSE ${PORT}
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['PORT'], timeout=2)"]
# An exec-form CMD expands no variables, so a shell names the module; `exec` makes python
# PID 1, so `docker stop`'s SIGTERM reaches it and it stops within its bound.
CMD ["sh", "-c", "exec python -m \"$SERVICE\""]
