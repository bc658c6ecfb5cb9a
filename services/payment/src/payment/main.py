"""Composition root of payment: settings -> engine -> payment service + outbox relay -> app."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial

from fastapi import FastAPI

from messaging import outbox, outbox_store
from messaging.chassis import db
from messaging.chassis.http import ReadinessCheck, install_common
from messaging.chassis.logs import setup_logging
from messaging.chassis.runtime import BrokerLink, run_periodically
from messaging.chassis.server import serve
from messaging.chassis.settings import load_settings
from messaging.observability import telemetry
from payment import api, store
from payment.handlers import PaymentService
from payment.settings import Settings

SERVICE = "payment"


def create_app(settings: Settings) -> FastAPI:
    engine = db.create_engine(settings.database_url)
    sessions = db.session_factory(engine)
    broker = BrokerLink(settings.rabbitmq_url, SERVICE)
    relay = outbox.OutboxRelay(
        sessions, broker.connection, service=SERVICE,
        batch_size=settings.outbox_batch_size, poll_interval=settings.outbox_poll_seconds,
    )
    # The relay gets each committed outbox row in-process and publishes it without a read.
    payments = PaymentService(sessions, hand_off=relay,
                              order_paid_version=settings.order_paid_version)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if settings.sql_spans:
            telemetry.instrument_engine(engine)
        with telemetry.untraced():  # start-up is not part of any trace
            await db.create_schema(engine, store.metadata, outbox_store.metadata)
        # Payments are taken while the broker is down: the relay waits for the connection.
        broker.start()
        retention = timedelta(hours=settings.outbox_retention_hours)
        tasks = [
            asyncio.create_task(relay.run(), name="outbox-relay"),
            asyncio.create_task(
                run_periodically(
                    partial(outbox.forget_published_older_than, sessions, retention),
                    "outbox upkeep",
                ),
                name="outbox-upkeep",
            ),
        ]
        yield
        await payments.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await broker.close()
        await engine.dispose()

    app = FastAPI(title="Mini EC payment", lifespan=lifespan)
    app.include_router(api.router(payments))
    checks: dict[str, ReadinessCheck] = {"database": partial(db.check_writable, engine),
                                         "broker": broker.check}
    install_common(app, SERVICE, checks, max_body_bytes=settings.http_max_body_bytes)
    return app


def main() -> None:
    settings = load_settings(Settings, SERVICE)
    setup_logging(SERVICE, settings.log_level)
    telemetry.setup_tracing(SERVICE)
    serve(create_app(settings), settings)
