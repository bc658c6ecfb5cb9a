"""HTTP pieces every service shares: health, readiness, metrics, correlation id, request metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.trace import StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_LATEST
from prometheus_client.registry import Collector
from pydantic import BaseModel
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from messaging.chassis import http_guard
from messaging.chassis.settings import ServiceSettings
from messaging.observability import correlation, metrics, telemetry

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]
# Brings gauges up to date just before a scrape (e.g. queue depths); bounded by this timeout.
ScrapeRefresh = Callable[[], Awaitable[None]]
SCRAPE_REFRESH_TIMEOUT_SECONDS = 2.0
OPENMETRICS = OPENMETRICS_LATEST.split(";")[0]  # application/openmetrics-text


class Problem(BaseModel):
    """The body of a 4xx other than 422 (FastAPI's HTTPException shape)."""

    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]
    # A consuming service's kill switch: state, by, reason, until (messaging/operations/admin.py).
    consumer: dict[str, Any] | None = None


def problem(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry for an error answered with a Problem body."""
    return {"description": description, "model": Problem}


async def _readiness(checks: dict[str, ReadinessCheck]) -> dict[str, str]:
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            with telemetry.untraced():  # a probe is not part of any order
                await check()
            results[name] = "ok"
        except Exception as exc:
            results[name] = f"unavailable: {exc or type(exc).__name__}"
    return results


def exposition_for(accept: str | None) -> tuple[Callable[[Collector], bytes], str]:
    """The exposition format the scraper asks for: OpenMetrics (the only one that carries
    exemplars; Prometheus asks for it first) or Prometheus text. An Accept header the client
    library cannot read (`version=abc`) gets the text format, not a 500."""
    try:
        return choose_encoder(accept or "")
    except (TypeError, ValueError):
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4  # choose_encoder's own default


def ops_router(
    checks: dict[str, ReadinessCheck],
    service: str = "unknown",
    refresh: Sequence[ScrapeRefresh] = (),
    consumer: Callable[[], dict[str, Any]] | None = None,
) -> APIRouter:
    """`/healthz` (the process answers), `/readyz` (each check passes; and the consumer's
    state, when there is a consumer), `/metrics`."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", response_model=Readiness, responses={
        503: {"description": "A check fails: take this instance out of rotation",
              "model": Readiness}})
    async def readyz() -> JSONResponse:
        results = await _readiness(checks)
        ready = all(v == "ok" for v in results.values())
        body: dict[str, Any] = {"ready": ready, "checks": results}
        if consumer is not None:
            body["consumer"] = consumer()
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics", response_class=PlainTextResponse, responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}},
                          OPENMETRICS: {"schema": {"type": "string"}}},
              "description": "Prometheus text exposition format; OpenMetrics (with the "
                             "latency histograms' trace-id exemplars) when the Accept header "
                             "asks for application/openmetrics-text"}})
    async def prometheus_metrics(request: Request) -> Response:
        # Prometheus never calls /readyz: readiness is exported as a gauge, as of this scrape.
        results = await _readiness(checks)
        metrics.SERVICE_READY.labels(service).set(
            1 if all(v == "ok" for v in results.values()) else 0
        )
        for job in refresh:
            try:
                with telemetry.untraced():
                    async with asyncio.timeout(SCRAPE_REFRESH_TIMEOUT_SECONDS):
                        await job()
            except Exception as exc:  # the gauges keep their last values; readiness tells why
                log.debug("scrape refresh failed: %s: %s", type(exc).__name__, exc)
        encode, content_type = exposition_for(request.headers.get("accept"))
        return Response(encode(REGISTRY), headers={"Content-Type": content_type})

    return router


class CorrelationMiddleware:
    """Takes `X-Correlation-ID` (or mints one), makes it current, echoes it, counts the request.

    Plain ASGI rather than BaseHTTPMiddleware, so the id stays current until the response is
    fully sent (logs and spans of the send phase carry it too).
    """

    def __init__(self, app: ASGIApp, service: str):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = correlation.valid_or_new(Headers(scope=scope).get(correlation.HEADER))
        token = correlation.current.set(cid)
        # The server span was started by the OpenTelemetry middleware, outside this one.
        trace.get_current_span().set_attribute(telemetry.ATTRIBUTE, cid)
        started = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[correlation.HEADER] = cid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Answered here rather than by Starlette's outer error middleware, so that the
            # 500 carries the correlation id and the log line has the request's ids.
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            span = trace.get_current_span()
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            if status is not None:
                raise  # the response has begun: nothing else can be sent
            await PlainTextResponse("Internal Server Error", 500)(scope, receive, send_with_id)
        finally:
            status = status or 500
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope["method"]
            metrics.child(metrics.HTTP_REQUESTS, self.service, method, path, str(status)).inc()
            elapsed = time.perf_counter() - started
            metrics.child(metrics.HTTP_SECONDS, self.service, method, path).observe(
                elapsed, exemplar=metrics.trace_exemplar())
            if path not in _QUIET_ROUTES:
                # The access log (uvicorn's is off): in the request's trace and correlation.
                log.info("%s %s -> %d (%.1f ms)", method, scope["path"], status, elapsed * 1000)
            correlation.current.reset(token)


# Probes and scrapes are not part of any order: no traces and no access log lines for them.
_QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")
UNTRACED_URLS = ",".join(f"{route}$" for route in _QUIET_ROUTES)


def install_common(
    app: FastAPI,
    service: str,
    checks: dict[str, ReadinessCheck],
    refresh: Sequence[ScrapeRefresh] = (),
    max_body_bytes: int = ServiceSettings.model_fields["http_max_body_bytes"].default,
    consumer: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Ops routes, the body guard, the correlation middleware and the HTTP server spans."""
    http_guard.install(app, max_body_bytes)  # inside the correlation middleware: a 413 is
    app.add_middleware(CorrelationMiddleware, service=service)  # counted and carries the id
    app.include_router(ops_router(checks, service, refresh, consumer))
    # The ASGI layer's own "http send/receive" spans say nothing the server span does not.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=UNTRACED_URLS, exclude_spans=["receive", "send"]
    )
    app.openapi = lambda: _openapi_with_limits(app, max_body_bytes)  # type: ignore[method-assign]  # FastAPI documents replacing it


def _openapi_with_limits(app: FastAPI, max_body_bytes: int) -> dict[str, Any]:
    """The generated document, plus the 413 every operation with a body can answer."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = Problem.model_json_schema()
        for operations in schema["paths"].values():
            for operation in operations.values():
                if "requestBody" in operation:
                    operation["responses"]["413"] = {
                        "description": f"Request body larger than {max_body_bytes} bytes",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}}},
                    }
        app.openapi_schema = schema
    return app.openapi_schema
