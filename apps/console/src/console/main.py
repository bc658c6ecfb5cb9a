"""Composition root of the console: settings -> store, broker link -> ingest of every DLQ,
replayer -> API and pages."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial

from fastapi import FastAPI

from console import api, auth, metrics, pages, store
from console.auth import Guard
from console.ingest import Ingest
from console.replay import Replayer
from console.settings import Settings
from messaging import spec
from messaging.chassis import db
from messaging.chassis.http import ReadinessCheck, install_common
from messaging.chassis.logs import setup_logging
from messaging.chassis.runtime import BrokerLink, run_periodically
from messaging.chassis.server import serve
from messaging.chassis.settings import load_settings
from messaging.observability import telemetry
from messaging.topology import QueueTopology

SERVICE = "console"


def consuming_queues(settings: Settings) -> dict[str, str]:
    """{work queue: service}: of the services CONSOLE_SERVICES names, else of every consuming
    service installed (their specs). None at all is a start-up error: a console that watches
    nothing would look like a system with no dead letters."""
    if settings.console_services:
        return {f"{name}.events": name for name in settings.console_services.split(",")}
    queues = {QueueTopology.for_service(s.name).name: s.name for s in spec.consumers()}
    if not queues:  # exit 2 with one line, as a bad setting does (load_settings)
        print("console: no consuming service installed and CONSOLE_SERVICES is empty: name "
              "the services whose DLQs to take", file=sys.stderr)
        raise SystemExit(2)
    return queues


def create_app(settings: Settings) -> FastAPI:
    engine = db.create_engine(settings.database_url)
    sessions = db.session_factory(engine)
    broker = BrokerLink(settings.rabbitmq_url, SERVICE)
    work_queues = consuming_queues(settings)
    ingest = Ingest(sessions, broker, {f"{q}.dlq": s for q, s in work_queues.items()},
                    batch=settings.console_ingest_batch)
    replayer = Replayer(sessions, broker, list(work_queues))

    async def refresh_parked() -> None:
        metrics.PARKED.clear()
        for service, error_class, count in await store.parked_counts(sessions):
            metrics.PARKED.labels(service, error_class).set(count)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        with telemetry.untraced():
            await db.create_schema(engine, store.metadata)
            await store.recover(sessions)
        broker.start()
        retention = timedelta(days=settings.console_retention_days)
        tasks = [
            asyncio.create_task(ingest.run(), name="console-ingest"),
            asyncio.create_task(run_periodically(
                partial(store.forget_older_than, sessions, retention), "console retention"),
                name="console-retention"),
        ]
        yield
        await replayer.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await broker.close()
        await engine.dispose()

    # The OpenAPI document and its page need the credentials too (auth.guarded_docs).
    app = FastAPI(title="Mini EC console", lifespan=lifespan, docs_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.replayer = replayer
    app.state.ingest = ingest
    app.state.guard = Guard(settings.console_user, settings.console_password)
    app.include_router(api.router())
    app.include_router(auth.docs_router())
    pages.install(app)
    checks: dict[str, ReadinessCheck] = {"database": partial(db.check_writable, engine),
                                         "broker": broker.check}
    install_common(app, SERVICE, checks, refresh=[refresh_parked],
                   max_body_bytes=settings.http_max_body_bytes)
    return app


def main() -> None:
    settings = load_settings(Settings, SERVICE)
    setup_logging(SERVICE, settings.log_level)
    telemetry.setup_tracing(SERVICE)
    serve(create_app(settings), settings)
