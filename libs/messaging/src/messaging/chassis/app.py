"""The FastAPI app and `main` of a service, assembled from its spec: produce-only,
consume-only, or both come from what the spec declares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from messaging import inbox, outbox_store, spec
from messaging.chassis import db
from messaging.chassis.http import ReadinessCheck, install_common
from messaging.chassis.logs import setup_logging
from messaging.chassis.runtime import ConsumerRuntime, ProducerRuntime
from messaging.chassis.server import serve
from messaging.chassis.settings import ConsumerSettings, ServiceSettings, load_settings
from messaging.observability import telemetry
from messaging.operations.admin import consumer_router
from messaging.speed.transactions import unit_of_work


def service_app(service: spec.ServiceSpec, settings: ServiceSettings) -> FastAPI:
    """Engine -> the spec's use cases (their transactions) and routes; a consumer of the
    spec's queue (inbox) if it consumes; an outbox relay if it produces events -> read API,
    health, metrics."""
    engine = db.create_engine(settings.database_url)
    sessions = db.session_factory(engine)
    publishes = bool(service.produces)
    runtime: ConsumerRuntime | ProducerRuntime
    admin_token = None
    if service.consumes is not None:
        if not isinstance(settings, ConsumerSettings):
            raise TypeError(f"{service.name} consumes events: its settings must include "
                            "ConsumerSettings")
        # A consumer that produces events stages them in its own outbox, in the inbox
        # transaction of the event that caused them; its runtime relays them.
        runtime = ConsumerRuntime(
            service.name, settings, inbox.Inbox(sessions),
            service.consumes.registry(settings),
            outbox_sessions=sessions if publishes else None)
        admin_token = settings.admin_token
    elif publishes:
        runtime = ProducerRuntime(service.name, settings, sessions)
    else:
        raise ValueError(f"{service.name} neither consumes nor produces events")
    tables = (service.tables, *((inbox.metadata,) if service.consumes is not None else ()),
              *((outbox_store.metadata,) if publishes else ()))
    # The use cases' transactions: the relay gets what they commit (SPEED_LAYER: in-process).
    relay = runtime.relay
    transactions = unit_of_work(sessions, speed=settings.speed, relay=relay,
                                wake=relay.notify if relay is not None else None)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.sql_spans:
            telemetry.instrument_engine(engine)
        with telemetry.untraced():  # start-up is not part of any trace
            await db.create_schema(engine, *tables)
        await runtime.start()
        yield
        await transactions.close()
        await runtime.stop()
        await db.dispose(engine)

    app = FastAPI(title=f"Mini EC {service.name}", lifespan=lifespan)
    if service.router is not None:
        parts = (service.use_cases(transactions, settings) if service.use_cases is not None
                 else sessions)
        app.include_router(service.router(parts))
    checks: dict[str, ReadinessCheck] = {"database": partial(db.check_writable, engine),
                                         "broker": runtime.check}
    if isinstance(runtime, ProducerRuntime):
        install_common(app, service.name, checks, max_body_bytes=settings.http_max_body_bytes)
        return app
    install_common(app, service.name, checks, refresh=[runtime.refresh_queue_stats],
                   max_body_bytes=settings.http_max_body_bytes, consumer=runtime.flow.view)
    app.include_router(consumer_router(service.name, runtime.flow, admin_token))
    return app


def service_main(service: spec.ServiceSpec) -> None:
    """`python -m <service>`: settings from the environment -> logging, tracing -> server."""
    settings = load_settings(service.settings, service.name)
    setup_logging(service.name, settings.log_level)
    telemetry.setup_tracing(service.name)
    serve(service_app(service, settings), settings)
