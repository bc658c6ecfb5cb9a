"""Composition root of the synchronous mode ("sync first"): payment's HTTP API, and the points,
mailer and audit handlers called in-process, before the payment request answers.

The only module allowed to import several services. Each service keeps its own database
and its own HTTP port, so the contract of docs/design.md (section 2) holds unchanged; what changes
is how an event reaches the handlers:

    POST /payments -> PaymentService.pay (payment + outbox row, one commit)
                   -> events_committed -> Dispatcher.dispatch
                        -> points: Inbox.process(event, points.handlers.handle)
                        -> mailer: Inbox.process(event, mailer.handlers.record_mail,
                                                  before=mailer.handlers.send_mail)
                        -> audit:  Inbox.process(event, audit.handlers.handle)
                   -> 201

A failing handler does not undo the payment (it is committed first); the failure is logged,
traced, counted and named in the `X-Handler-Failures` response header. docs/sync-then-async.md
says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from contextvars import ContextVar
from functools import partial

import uvicorn
from fastapi import FastAPI, Request
from sqlalchemy import MetaData

import audit.api
import audit.handlers
import audit.store
import mailer.api
import mailer.handlers
import mailer.store
import payment.api
import payment.store
import points.api
import points.handlers
import points.store
from inprocess.settings import SERVICES, Settings
from mailer.settings import Settings as MailerSettings
from mailer.smtp import SmtpSender
from messaging import db, inbox, outbox, telemetry
from messaging.contracts import Event
from messaging.dispatcher import Dispatcher, HandlerFailure
from messaging.http import install_common
from messaging.logs import setup_logging
from messaging.settings import load_settings
from payment.handlers import PaymentService

FAILURES_HEADER = "X-Handler-Failures"

# The failures of the request being served: set by the payment app's middleware, filled by
# the dispatch after commit (a list, so the endpoint's task can append to the same object).
_request_failures: ContextVar[list[HandlerFailure] | None] = ContextVar(
    "handler_failures", default=None
)

_SCHEMAS: dict[str, tuple[MetaData, ...]] = {
    "payment": (payment.store.metadata, outbox.metadata),
    "points": (points.store.metadata, inbox.metadata),
    "mailer": (mailer.store.metadata, inbox.metadata),
    "audit": (audit.store.metadata, inbox.metadata),
}


class InProcessShop:
    """Four services' engines and apps in one process, joined by an in-process dispatcher."""

    def __init__(self, settings: Settings, mail: MailerSettings):
        self.settings = settings
        self.engines = {s: db.create_engine(settings.database_url(s)) for s in SERVICES}
        sessions = {s: db.session_factory(engine) for s, engine in self.engines.items()}

        # The same handlers and the same inboxes as the consumers use: dedupe and per-order
        # order hold here too, and the tables are the ones the asynchronous mode would find.
        sender = SmtpSender(mail.smtp_host, mail.smtp_port, mail.smtp_timeout)
        handlers = {
            "points": (points.handlers.handle, None),
            "mailer": (partial(mailer.handlers.record_mail, mail_from=mail.mail_from),
                       partial(mailer.handlers.send_mail, sender=sender, mail_from=mail.mail_from)),
            "audit": (audit.handlers.handle, None),
        }
        self.dispatcher = Dispatcher()
        for name, (handler, before) in handlers.items():
            self.dispatcher.subscribe(name, partial(inbox.Inbox(sessions[name]).process,
                                                    handler=handler, before=before))

        payments = PaymentService(sessions["payment"], events_committed=self._dispatch)
        self.apps = {"payment": _payment_app(payments, self.engines["payment"])}
        for name, api in (("points", points.api), ("mailer", mailer.api), ("audit", audit.api)):
            self.apps[name] = _read_app(name, api.router(sessions[name]), self.engines[name])

    async def _dispatch(self, events: list[Event]) -> None:
        """Runs right after payment's commit, inside the request: the handlers' work."""
        failures = await self.dispatcher.dispatch_all(events)
        reported = _request_failures.get()
        if reported is not None:
            reported.extend(failures)

    async def start(self) -> None:
        for name, engine in self.engines.items():
            telemetry.instrument_engine(engine)
            await db.create_schema(engine, *_SCHEMAS[name])

    async def close(self) -> None:
        for engine in self.engines.values():
            await engine.dispose()


def _payment_app(payments: PaymentService, engine) -> FastAPI:  # type: ignore[no-untyped-def]
    app = FastAPI(title="Mini EC payment (synchronous mode)")
    app.include_router(payment.api.router(payments))
    install_common(app, "payment", {"database": partial(db.ping, engine)})

    @app.middleware("http")
    async def report_handler_failures(request: Request, call_next):  # type: ignore[no-untyped-def]
        failures: list[HandlerFailure] = []
        token = _request_failures.set(failures)
        try:
            response = await call_next(request)
        finally:
            _request_failures.reset(token)
        if failures:
            response.headers[FAILURES_HEADER] = ", ".join(
                dict.fromkeys(f.handler for f in failures)
            )
        return response

    return app


def _read_app(name: str, router, engine) -> FastAPI:  # type: ignore[no-untyped-def]
    app = FastAPI(title=f"Mini EC {name} (synchronous mode)")
    app.include_router(router)
    # Ready when its database answers: there is no broker in this mode.
    install_common(app, name, {"database": partial(db.ping, engine)})
    return app


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to `run`, which stops all four servers at once."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


async def run(shop: InProcessShop) -> None:
    await shop.start()
    servers = [
        _Server(uvicorn.Config(
            shop.apps[name], host=shop.settings.host, port=shop.settings.port(name),
            log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=10,
        ))
        for name in SERVICES
    ]

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        await shop.close()


def main() -> None:
    settings = load_settings(Settings, "inprocess")
    # The mailer's own settings (SMTP_*, MAIL_FROM), validated the same way.
    mail = load_settings(MailerSettings, "inprocess", port=settings.mailer_port,
                         database_url=settings.mailer_database_url)
    setup_logging("inprocess", settings.log_level)
    telemetry.setup_tracing("inprocess")
    asyncio.run(run(InProcessShop(settings, mail)))
