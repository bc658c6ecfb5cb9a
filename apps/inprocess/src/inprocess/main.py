"""Composition root of the synchronous mode ("sync first"): payment's HTTP API, and every
consuming service's handlers called in-process, before the payment request answers.

The only module allowed to import several services: payment by name (it takes the
requests), the consumers through their specs (messaging/spec.py). Each service keeps its own
database and its own HTTP port, so the contract of docs/design.md (section 2) holds
unchanged; what changes is how an event reaches the handlers:

    POST /payments -> PaymentService.pay (payment + outbox row, one commit)
                   -> events_committed -> Dispatcher.dispatch
                        -> each consuming service whose bindings route the event:
                           Inbox.process(event, its subscriptions' handler, before=...)
                   -> the events those handlers committed to their own outboxes
                      (shipping's OrderShipped), dispatched the same way, round by round
                   -> 201

A failing handler does not undo the payment (it is committed first); the failure is logged,
traced, counted and named in the `X-Handler-Failures` response header. docs/sync-then-async.md
says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from functools import partial

import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts import EVENT_TYPES, Event, WireEvent
from inprocess.settings import SERVICES, Settings
from messaging import inbox, outbox_store, spec
from messaging.chassis import db
from messaging.chassis.http import install_common
from messaging.chassis.logs import setup_logging
from messaging.chassis.server import Limits, loop_factory, uvicorn_config
from messaging.chassis.settings import ServiceSettings, load_settings
from messaging.dispatcher import Dispatcher, HandlerFailure
from messaging.observability import telemetry
from messaging.speed.transactions import unit_of_work
from payment.spec import SPEC as PAYMENT

FAILURES_HEADER = "X-Handler-Failures"

# The failures of the request being served: set by the payment app's middleware, filled by
# the dispatch after commit (a list, so the endpoint's task can append to the same object).
_request_failures: ContextVar[list[HandlerFailure] | None] = ContextVar(
    "handler_failures", default=None
)


# The events the consumers' handlers committed to their outboxes during one dispatch round.
_handed_on: ContextVar[list[WireEvent] | None] = ContextVar("handed_on", default=None)


async def _handing_on(
    process: Callable[[Event], Awaitable[inbox.Outcome]],
    sessions: async_sessionmaker[AsyncSession], event: Event,
) -> inbox.Outcome:
    """`process`, and the events its handler committed to the outbox kept for the next round."""
    with outbox_store.staged_events() as staged:
        outcome = await process(event)
    queue = _handed_on.get()
    if outcome is inbox.Outcome.APPLIED and staged and queue is not None:
        queue.extend(await outbox_store.committed(sessions, staged))
    return outcome


class InProcessShop:
    """Every service's engine and app in one process, joined by an in-process dispatcher.

    `consumer_settings` holds each consuming service's own settings (its SMTP server, ...).
    """

    def __init__(self, settings: Settings, consumer_settings: dict[str, ServiceSettings]):
        self.settings = settings
        self.engines = {s: db.create_engine(settings.database_url(s)) for s in SERVICES}
        sessions = {s: db.session_factory(engine) for s, engine in self.engines.items()}
        self._schemas: dict[str, tuple[MetaData, ...]] = {
            PAYMENT.name: (PAYMENT.tables, outbox_store.metadata)}

        # The same handlers and the same inboxes as the consumers use: dedupe and per-order
        # order hold here too, and the tables are the ones the asynchronous mode would find.
        self.dispatcher = Dispatcher()
        self.apps: dict[str, FastAPI] = {}
        for service in spec.consumers():
            assert service.consumes is not None
            name = service.name
            # The same registry the service's RabbitMQ consumer applies events with.
            subscriptions = service.consumes.registry(consumer_settings[name])
            handle = partial(inbox.Inbox(sessions[name]).process, subscriptions=subscriptions)
            self._schemas[name] = (service.tables, inbox.metadata)
            if service.produces:
                # A consumer that publishes: what it stages in its outbox is dispatched
                # next, in the same request (its rows, as payment's, stay unrelayed).
                handle = partial(_handing_on, handle, sessions[name])
                self._schemas[name] += (outbox_store.metadata,)
            self.dispatcher.subscribe(
                name, handle, [t for t in EVENT_TYPES if service.consumes.receives(t)])
            router = service.router(sessions[name]) if service.router else None
            self.apps[name] = _read_app(name, router, self.engines[name])

        # Payment's use cases as its spec builds them; what they commit is dispatched next.
        self._transactions = unit_of_work(sessions[PAYMENT.name], speed=settings.speed,
                                          events_committed=self._dispatch)
        assert PAYMENT.use_cases is not None
        payments = PAYMENT.use_cases(self._transactions, settings)
        self.apps[PAYMENT.name] = _payment_app(payments, self.engines[PAYMENT.name])

    async def _dispatch(self, events: list[WireEvent]) -> None:
        """Runs right after payment's commit, inside the request: the handlers' work, then
        the work of the events the handlers published (OrderPaid -> OrderShipped -> its
        handlers), round after round, until no handler publishes anything more."""
        pending = list(events)
        while pending:
            published: list[WireEvent] = []
            token = _handed_on.set(published)
            try:
                failures = await self.dispatcher.dispatch_all(pending)
            finally:
                _handed_on.reset(token)
            reported = _request_failures.get()
            if reported is not None:
                reported.extend(failures)
            pending = published

    async def start(self) -> None:
        for name, engine in self.engines.items():
            if self.settings.sql_spans:
                telemetry.instrument_engine(engine)
            await db.create_schema(engine, *self._schemas[name])

    async def close(self) -> None:
        await self._transactions.close()  # its group-commit worker
        for engine in self.engines.values():
            await db.dispose(engine)


def _payment_app(payments: object, engine: AsyncEngine) -> FastAPI:
    app = FastAPI(title="Mini EC payment (synchronous mode)")
    assert PAYMENT.router is not None
    app.include_router(PAYMENT.router(payments))
    install_common(app, PAYMENT.name, {"database": partial(db.ping, engine)})

    @app.middleware("http")
    async def report_handler_failures(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
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


def _read_app(name: str, router: APIRouter | None, engine: AsyncEngine) -> FastAPI:
    app = FastAPI(title=f"Mini EC {name} (synchronous mode)")
    if router is not None:
        app.include_router(router)
    # Ready when its database answers: there is no broker in this mode.
    install_common(app, name, {"database": partial(db.ping, engine)})
    return app


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to `run`, which stops all four servers at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run(shop: InProcessShop) -> None:
    await shop.start()
    servers = [
        _Server(uvicorn_config(shop.apps[name], shop.settings.host, shop.settings.port(name),
                               Limits(), lifespan="off"))
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
    # Each consuming service's own settings (the mailer's SMTP_*, MAIL_FROM), validated the
    # same way; its port and database are the prefixed ones above.
    consumer_settings = {
        s.name: load_settings(s.settings, "inprocess", port=settings.port(s.name),
                              database_url=settings.database_url(s.name))
        for s in spec.consumers()
    }
    setup_logging("inprocess", settings.log_level)
    telemetry.setup_tracing("inprocess")
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        runner.run(run(InProcessShop(settings, consumer_settings)))
