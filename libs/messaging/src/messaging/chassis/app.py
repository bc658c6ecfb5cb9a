"""The FastAPI app and `main` of a consuming service, assembled from its spec."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from messaging import inbox, outbox_store, spec
from messaging.chassis import db
from messaging.chassis.http import ReadinessCheck, install_common
from messaging.chassis.logs import setup_logging
from messaging.chassis.runtime import ConsumerRuntime
from messaging.chassis.server import serve
from messaging.chassis.settings import ConsumerSettings, load_settings
from messaging.observability import telemetry
from messaging.operations.admin import consumer_router


def consumer_app(service: spec.ServiceSpec, settings: ConsumerSettings) -> FastAPI:
    """Engine -> inbox + consumer of the spec's queue (+ outbox relay if the spec produces
    events) -> read API, health, metrics."""
    if service.consumes is None:
        raise ValueError(f"{service.name} consumes no events")
    engine = db.create_engine(settings.database_url)
    sessions = db.session_factory(engine)
    subscriptions = service.consumes.registry(settings)
    # A consumer that produces events stages them in its own outbox, in the inbox
    # transaction of the event that caused them; its runtime relays them.
    publishes = bool(service.produces)
    runtime = ConsumerRuntime(service.name, settings, inbox.Inbox(sessions), subscriptions,
                              outbox_sessions=sessions if publishes else None)
    tables = (service.tables, inbox.metadata, *((outbox_store.metadata,) if publishes else ()))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.sql_spans:
            telemetry.instrument_engine(engine)
        with telemetry.untraced():  # start-up is not part of any trace
            await db.create_schema(engine, *tables)
        await runtime.start()
        yield
        await runtime.stop()
        await engine.dispose()

    app = FastAPI(title=f"Mini EC {service.name}", lifespan=lifespan)
    if service.router is not None:
        app.include_router(service.router(sessions))
    checks: dict[str, ReadinessCheck] = {"database": partial(db.check_writable, engine),
                                         "broker": runtime.check}
    install_common(app, service.name, checks, refresh=[runtime.refresh_queue_stats],
                   max_body_bytes=settings.http_max_body_bytes, consumer=runtime.flow.view)
    app.include_router(consumer_router(service.name, runtime.flow, settings.admin_token))
    return app


def consumer_main(service: spec.ServiceSpec) -> None:
    """`python -m <service>`: settings from the environment -> logging, tracing -> server."""
    settings = load_settings(service.settings, service.name)
    setup_logging(service.name, settings.log_level)
    telemetry.setup_tracing(service.name)
    assert isinstance(settings, ConsumerSettings)
    serve(consumer_app(service, settings), settings)
