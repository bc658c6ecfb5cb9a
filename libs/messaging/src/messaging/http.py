"""HTTP pieces every service shares: health, readiness, metrics, correlation id, request metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.trace import StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from messaging import correlation, metrics, telemetry

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]


def ops_router(checks: dict[str, ReadinessCheck]) -> APIRouter:
    """`/healthz` (the process answers), `/readyz` (each check passes), `/metrics`."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                with telemetry.untraced():  # a probe is not part of any order
                    await check()
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"unavailable: {exc or type(exc).__name__}"
        ready = all(v == "ok" for v in results.values())
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    @router.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

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
            metrics.HTTP_REQUESTS.labels(self.service, method, path, str(status)).inc()
            elapsed = time.perf_counter() - started
            metrics.HTTP_SECONDS.labels(self.service, method, path).observe(elapsed)
            if path not in _QUIET_ROUTES:
                # The access log (uvicorn's is off): in the request's trace and correlation.
                log.info("%s %s -> %d (%.1f ms)", method, scope["path"], status, elapsed * 1000)
            correlation.current.reset(token)


# Probes and scrapes are not part of any order: no traces and no access log lines for them.
_QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")
UNTRACED_URLS = ",".join(f"{route}$" for route in _QUIET_ROUTES)


def install_common(app: FastAPI, service: str, checks: dict[str, ReadinessCheck]) -> None:
    """Ops routes, the correlation middleware and the HTTP server spans."""
    app.add_middleware(CorrelationMiddleware, service=service)
    app.include_router(ops_router(checks))
    # The ASGI layer's own "http send/receive" spans say nothing the server span does not.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=UNTRACED_URLS, exclude_spans=["receive", "send"]
    )
