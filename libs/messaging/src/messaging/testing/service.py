"""A consuming service's spec run in memory: its handlers, its real inbox, an in-memory
SQLite database, no broker.

    async with InMemoryService(SPEC) as service:
        assert await service.deliver(event) is Outcome.APPLIED
        service.applied   # the events applied, in order
        service.staged    # what the handlers committed to the outbox

It is the synchronous mode's path (apps/inprocess), for one service: the spec's bindings
decide which event types reach it, the in-process dispatcher (messaging/dispatcher.py)
upcasts and hands each to `Inbox.process` with the spec's subscriptions, so deduplication,
per-order ordering and the transaction are the production ones. What the consumer adds
around it (retries, the DLQ) is the consumer's, tested with messaging/testing/fake_broker.py.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts import EVENT_TYPES, Event, WireEvent
from messaging import inbox, outbox_store
from messaging.chassis import db
from messaging.dispatcher import Dispatcher
from messaging.inbox import Inbox, Outcome
from messaging.spec import ServiceSpec, Subscriptions


class InMemoryService:
    """`spec`'s consuming side on a fresh in-memory database. `settings`: the service's
    settings its subscriptions are built with (its defaults if not given)."""

    def __init__(self, spec: ServiceSpec, settings: Any = None):
        if spec.consumes is None:
            raise ValueError(f"{spec.name} consumes no events: nothing to run in memory")
        self.spec = spec
        self.subscriptions: Subscriptions = spec.consumes.registry(
            settings if settings is not None else spec.settings())
        self.applied: list[Event] = []
        self.staged: list[WireEvent] = []
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._outcome: Outcome | None = None
        self._dispatcher = Dispatcher()

    async def start(self) -> None:
        self._engine = db.create_engine("sqlite+aiosqlite:///:memory:")  # one connection
        tables: tuple[MetaData, ...] = (self.spec.tables, inbox.metadata)
        if self.spec.produces:
            tables += (outbox_store.metadata,)
        await db.create_schema(self._engine, *tables)
        self._sessions = db.session_factory(self._engine)
        assert self.spec.consumes is not None
        routed = [t for t in EVENT_TYPES if self.spec.consumes.receives(t)]
        self._dispatcher.subscribe(self.spec.name, self._process, routed)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """Sessions on the service's database: read its tables as its API would."""
        if self._sessions is None:
            raise RuntimeError("start the service first (async with InMemoryService(...))")
        return self._sessions

    async def deliver(self, event: WireEvent) -> Outcome | None:
        """Deliver one event as its queue would: the inbox's outcome, or what the handler or
        the inbox raised (OutOfOrder for an event that must wait, PermanentError, ...).
        None: the spec's bindings do not route this event type to the service."""
        self._outcome = None
        failures = await self._dispatcher.dispatch(event)
        if failures:
            raise failures[0].error
        return self._outcome

    async def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of one of the spec's tables, as dicts, in insertion order."""
        async with self.sessions() as session:
            result = await session.execute(select(self.spec.tables.tables[table]))
            return [dict(row) for row in result.mappings()]

    async def _process(self, event: Event) -> Outcome:
        with outbox_store.staged_events() as staged:
            outcome = await Inbox(self.sessions).process(event, self.subscriptions)
        self._outcome = outcome
        if outcome is Outcome.APPLIED:
            self.applied.append(event)
            self.staged += await outbox_store.committed(self.sessions, staged)
        return outcome
