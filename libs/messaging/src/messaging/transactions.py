"""The unit of work of a use case: its statements and the events it stages in the outbox
commit together, in one transaction, or not at all (docs/exactly-once.md).

    async def pay(tx: Transaction) -> Order:
        ...                                     # change the aggregate, save it on tx.connection
        await tx.stage(order.pull_domain_events())  # its events, into the outbox
        return order

    order = await transactions.run(pay)          # begin, run, commit

`Transactions` is the plain path: a connection, BEGIN, the work, COMMIT; then the relay is woken
and the caller gets the events it staged (`events_committed`). The speed layer
(messaging/speed/) wraps the same seam: several works per transaction, and the committed
rows handed to the relay in-process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts import WireEvent
from messaging.chassis.db import Statements, begin, engine_of
from messaging.outbox_store import OutboxRow, add_to_outbox

T = TypeVar("T")

# Gets the events a work staged, in its caller, once the transaction holding them committed.
EventsCommitted = Callable[[list[WireEvent]], Awaitable[None]]


class Refusal(Exception):  # noqa: N818 (a refusal is an answer, not an error)
    """What a work raises to refuse, having written nothing (an order already paid): the
    transaction it ran in may still commit the work of others."""


@dataclass
class Transaction:
    """One work's view of the open transaction: the connection its statements run on, and
    the outbox its events are staged in (`rows`: the transaction's, shared by its works)."""

    connection: Statements
    rows: list[OutboxRow] = field(default_factory=list)
    events: list[WireEvent] = field(default_factory=list)  # staged by this work

    def another(self) -> Transaction:
        """The view of another work sharing this transaction (a group commit)."""
        return Transaction(self.connection, rows=self.rows)

    async def stage(self, events: Sequence[WireEvent]) -> None:
        """Write `events` into the outbox, in this transaction."""
        for event in events:
            self.rows.append(await add_to_outbox(self.connection, event))
            self.events.append(event)


Work = Callable[[Transaction], Awaitable[T]]


class Transactions:
    """Runs each work in a transaction of its own. `wake`: called after a commit that staged
    events (the relay's `notify`, so it publishes them without waiting for its poll)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *,
                 events_committed: EventsCommitted | None = None,
                 wake: Callable[[], None] | None = None):
        self.sessions = sessions
        self._events_committed = events_committed
        self._wake = wake

    async def run(self, work: Work[T]) -> T:
        """`work(tx)` in one transaction; its result once committed."""
        async with self.begin() as tx:
            result = await work(tx)
        await self.committed(tx)
        return result

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Transaction]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        async with begin(self._engine) as conn:
            yield Transaction(conn)

    @cached_property
    def _engine(self) -> AsyncEngine:
        """A work's statements run on a Core connection: no ORM session around them."""
        return engine_of(self.sessions)

    async def committed(self, tx: Transaction) -> None:
        """After the commit that holds `tx`, in its caller."""
        if tx.events:
            if self._wake is not None:
                self._wake()
            if self._events_committed is not None:
                await self._events_committed(tx.events)

    async def close(self) -> None:
        """Nothing to stop on the plain path (the speed layer's workers stop here)."""
        return None


class UnitOfWork(Protocol):
    """What a use case is given: `Transactions`, or the speed layer's wrapper of it."""

    sessions: async_sessionmaker[AsyncSession]

    async def run(self, work: Work[T]) -> T: ...

    async def close(self) -> None: ...
