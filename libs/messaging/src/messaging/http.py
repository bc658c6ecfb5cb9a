"""HTTP pieces every service shares: health, readiness, metrics, correlation id, request metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.base import BaseHTTPMiddleware

from messaging import correlation, metrics

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


class CorrelationMiddleware(BaseHTTPMiddleware):
    """Takes `X-Correlation-ID` (or mints one), makes it current, echoes it, counts the request."""

    def __init__(self, app, service: str):  # type: ignore[no-untyped-def]
        super().__init__(app)
        self.service = service

    async def dispatch(self, request: Request, call_next):  # type: ignore[no-untyped-def]
        cid = correlation.valid_or_new(request.headers.get(correlation.HEADER))
        token = correlation.current.set(cid)
        trace.get_current_span().set_attribute("correlation_id", cid)
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers[correlation.HEADER] = cid
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(self.service, request.method, path, str(status)).inc()
            metrics.HTTP_SECONDS.labels(self.service, request.method, path).observe(
                time.perf_counter() - started
            )
            correlation.current.reset(token)


def install_common(app: FastAPI, service: str, checks: dict[str, ReadinessCheck]) -> None:
    app.add_middleware(CorrelationMiddleware, service=service)
    app.include_router(ops_router(checks))
