"""The outbox relay: publishes the event rows a transaction staged in its outbox.

A use case writes its state change and its events' rows in one transaction
(`messaging.outbox_store.add_to_outbox`). `OutboxRelay` publishes unsent rows with publisher
confirms and marks them published only after the broker's ack. A crash between the ack and
the mark publishes the event again: at least once on the wire, and the consumers' inboxes
make it exactly once in effect.

Read `OutboxRelay` in this order:

1. `_poll`, the plain path: the oldest unsent rows, read from the table on start, on
   `notify()`, after a failure and every `poll_interval`; while polls find nothing and
   nothing is committed, the interval doubles up to `idle_poll_interval` (an idle relay
   wakes that rarely; the first commit brings it back at once).
2. `_publish_and_mark`, the core every path shares: publish a list of rows (pipelined, with
   confirms), mark the confirmed ones published, count an attempt on the others and report
   them (`run` backs off, and they go out again).
3. Locks, where several relays share one outbox (PostgreSQL, several instances of a
   service): each locks its batch with `FOR UPDATE SKIP LOCKED` in a transaction held until
   the rows are marked, and leaves a row while an earlier unsent row of the same order is
   locked by another relay, so an order's events still leave in order. A relay that dies
   loses its transaction, and its locks with it, at once. On SQLite there is one relay per
   database, which reads, publishes, then marks (docs/scale-out.md).
4. The hand-off (`reserve`, `release`): a speed seam, apart at the end of the class.

The backlog gauges are `LagGauges`, kept true on a task of their own: every second while
rows are pending, and asleep while none are until a commit or a poll changes that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind
from sqlalchemy import ColumnElement, Row, Select, Update, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import utcnow
from messaging.chassis.db import Statements, UtcDateTime, begin, delete_in_batches, engine_of
from messaging.observability import correlation, metrics, telemetry
from messaging.observability.telemetry import untraced
from messaging.outbox_store import OutboxRow, outbox_table
from messaging.publisher import (
    PublishFailed,
    build_message,
    open_confirm_channel,
    publish_confirmed,
)
from messaging.topology import EXCHANGE, ensure_exchange

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# A relay's locks (its open transaction) idle longer than this are cut off by PostgreSQL and
# the rows go to another relay: well above one batch's publish time (PUBLISH_TIMEOUT_SECONDS).
LOCK_TIMEOUT_MS = 30_000

# Handed rows held in memory at most, in batches; beyond, the rows are left to the poll.
HANDED_MAX_BATCHES = 10

# How often the backlog gauges (outbox_pending_rows, outbox_oldest_pending_age_seconds) are
# read from the table while rows are pending (at most), whatever the relay is doing.
LAG_REPORT_SECONDS = 1.0


async def forget_published_older_than(
    sessions: async_sessionmaker[AsyncSession], age: timedelta, batch: int = 1000
) -> int:
    """Delete rows published longer than `age` ago, in short batches; returns how many.

    A published row has done its job; it is kept a while only to look at (what went out,
    when, with which trace). Unsent rows are never touched.
    """
    return await delete_in_batches(
        sessions, outbox_table.c.id, outbox_table.c.published_at < utcnow() - age, batch
    )


class OutboxRelay:
    """Publishes outbox rows: polling the table, and woken right after a commit."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        connect: Callable[[], Awaitable[AbstractRobustConnection]],
        *,
        service: str = "producer",  # the `service` label of its metrics
        batch_size: int = 200,
        poll_interval: float = 1.0,
        # The poll's interval backs off up to this while there is nothing to publish.
        idle_poll_interval: float = 10.0,
        # Low on purpose: after a broker outage the relay resumes within this many seconds.
        max_backoff: float = 5.0,
    ):
        self._sessions = sessions
        self._connect = connect
        self._service = service
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._idle_poll_interval = max(idle_poll_interval, poll_interval)
        # Rows were committed (notify, release) since the last poll: the poll keeps its pace.
        self._active = False
        self._max_backoff = max_backoff
        self._lag = LagGauges(sessions, service)
        # Built once: an idle relay's poll (every idle_poll_interval) builds no statement.
        self._oldest_unsent = (select(outbox_table).where(outbox_table.c.published_at.is_(None))
                               .order_by(outbox_table.c.id).limit(batch_size))
        self._wake = asyncio.Event()
        self._channel: AbstractChannel | None = None
        self._shared: bool | None = None
        # The hand-off's rows, by id: those being committed or handed over and not yet
        # published (the poll leaves them alone); `_handed`: those committed, in order.
        self._reserved: dict[int, OutboxRow] = {}
        self._handed: list[OutboxRow] = []
        # False until a poll found nothing more to take, and again after a notify(), a
        # failure or a quiet poll_interval: handed rows wait for the poll until then.
        self._caught_up = False

    @property
    def caught_up(self) -> bool:
        """True once a poll found nothing more to take, until a `notify()`, a failure or
        rows left to the poll: handed rows wait for the poll until then."""
        return self._caught_up

    @property
    def handed_count(self) -> int:
        """Rows committed and handed over (`release`), waiting in memory to be published."""
        return len(self._handed)

    @property
    def reserved_count(self) -> int:
        """Rows the poll leaves to this process's hand-off: being committed (`reserve`) or
        handed and not yet published."""
        return len(self._reserved)

    def notify(self) -> None:
        """Call after committing an outbox row: the relay polls for it without waiting."""
        self._caught_up = False
        self._active = True
        self._lag.changed()
        self._wake.set()

    async def run(self) -> None:
        """Relay until cancelled; the lag gauges are kept true alongside (`LagGauges.run`)."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._lag.run(), name=f"{self._service}-outbox-lag")
            await self._relay()

    async def _relay(self) -> None:
        backoff = self._poll_interval
        interval = self._poll_interval  # the poll's: backed off while there is nothing to do
        last_poll = float("-inf")
        while True:
            try:
                # The poll every poll_interval even under a steady stream of hand-offs:
                # rows of other instances and crashes must not wait for a quiet moment.
                if not self._caught_up or time.monotonic() >= self._poll_due(last_poll, interval):
                    self._caught_up = True  # a notify() from now on asks for another poll
                    active, self._active = self._active, False
                    last_poll = time.monotonic()
                    read = await self._poll_all()
                    interval = self._next_interval(interval, active or read > 0)
                while self._handed and self._caught_up:
                    await self._publish_handed()
                backoff = self._poll_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._caught_up = False  # what failed is the poll's again
                interval = self._poll_interval
                log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                # A hand-off that came while this round ran was taken by it (or is the
                # poll's now): only a later one may cut the backoff short.
                self._wake.clear()
                await self._wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if self._caught_up:
                await self._wait(max(self._poll_due(last_poll, interval) - time.monotonic(), 0.0))

    async def _poll_all(self) -> int:
        """Poll until a batch comes back short of full; returns the rows read."""
        total = 0
        while True:
            read = (await self._poll())[0]
            total += read
            if read < self._batch_size:  # else a full batch: there may be more
                return total

    def _next_interval(self, interval: float, busy: bool) -> float:
        """`poll_interval` while rows come; doubled after each quiet poll up to
        `idle_poll_interval`. Idle, the poll is only the fallback (rows another process or a
        crash left): docs/failure.md says how late it finds them."""
        if busy:
            return self._poll_interval
        return min(interval * 2, self._idle_poll_interval)

    def _poll_due(self, last_poll: float, interval: float) -> float:
        """When the next poll is due: rows handed over since the last one (`release`) bring
        a backed-off poll back to `poll_interval` at once."""
        return last_poll + (self._poll_interval if self._active else interval)

    async def _wait(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives just as the event is set, and the relay would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows (found by reading the table); returns how many
        were taken.

        Raises PublishFailed after marking what did go out, so `run` backs off.
        """
        taken = (await self._poll())[1]
        await self._lag.update()  # the gauges true at once for the caller
        return taken

    # --- The plain path: the poll -------------------------------------------------------

    async def _poll(self) -> tuple[int, int]:
        """One batch read from the table: (rows read, rows published or attempted)."""
        with untraced():  # polling: no trace per poll (each row's publish has its own)
            if await self._shared_outbox():
                async with self._locking() as session:
                    read = (await session.execute(
                        self._unsent_batch().with_for_update(skip_locked=True))).all()
                    rows = await _first_of_each_order(session, self._not_reserved(read))
                    unconfirmed = await self._publish_and_mark(rows, session)
            else:
                async with begin(engine_of(self._sessions)) as conn:
                    read = (await conn.execute(self._unsent_batch())).all()
                rows = self._not_reserved(read)
                unconfirmed = await self._publish_and_mark(rows)
        if rows:
            self._lag.changed()
        _raise_if_unconfirmed(unconfirmed, len(rows))
        return len(read), len(rows)

    def _unsent_batch(self) -> Select[Any]:
        """The oldest unsent rows, without those reserved for a hand-off (which must not
        fill the batch and hide the rows behind them)."""
        query = self._oldest_unsent
        if self._reserved:
            query = query.where(outbox_table.c.id.not_in(list(self._reserved)))
        return query

    def _not_reserved(self, rows: Sequence[Row[Any]]) -> list[OutboxRow]:
        """The rows read that no hand-off of this process is about to publish (reserved
        while the read was under way)."""
        return [_as_outbox_row(row) for row in rows if row.id not in self._reserved]

    # --- The core: publish, then mark ----------------------------------------------------

    async def _publish_and_mark(
        self, rows: Sequence[OutboxRow], locked_in: AsyncSession | None = None
    ) -> list[BaseException]:
        """Publish `rows` and mark the confirmed ones published; returns why the others
        were not confirmed (their attempt is counted, they stay unsent).

        The mark is written in `locked_in`, the transaction holding the rows' locks (its
        commit releases them), or, on SQLite (no locks), in a short transaction of its own.
        """
        if not rows:
            return []
        results = await self._publish(rows)
        if locked_in is not None:
            await self._mark(locked_in, rows, results)
        else:
            async with begin(engine_of(self._sessions)) as conn:
                await self._mark(conn, rows, results)
        return [result for result in results if result is not None]

    async def _publish(self, rows: Sequence[OutboxRow]) -> list[BaseException | None]:
        """Each row's outcome, in order: None if the broker confirmed it."""
        exchange = await self._exchange()
        # Publishes are pipelined: one confirm round-trip per batch, not per row.
        return await asyncio.gather(
            *(self._publish_row(exchange, row) for row in rows), return_exceptions=True
        )

    async def _publish_row(self, exchange: aio_pika.abc.AbstractExchange,
                           row: OutboxRow) -> None:
        message = build_message(
            row.body.encode(),
            message_id=row.event_id,
            correlation_id=row.correlation_id,
            event_type=row.event_type,
            timestamp=row.created_at,
        )
        with _in_trace_of(row):
            try:
                await publish_confirmed(exchange, message, routing_key=row.routing_key)
            except PublishFailed:
                metrics.PUBLISH_FAILED.labels(self._service).inc()
                metrics.OUTBOX_PUBLISHING.labels(self._service).set(0)
                raise
            metrics.PUBLISHED.labels(self._service).inc()
            metrics.OUTBOX_PUBLISHING.labels(self._service).set(1)
            metrics.OUTBOX_LAG.labels(self._service).observe(
                max(0.0, (utcnow() - row.created_at).total_seconds()),
                exemplar=metrics.trace_exemplar(),
            )

    async def _mark(
        self, session: AsyncSession | Statements, rows: Sequence[OutboxRow],
        results: Sequence[BaseException | None],
    ) -> None:
        """Mark what the broker confirmed (one statement per batch); count the attempt on
        what it did not. Callers run it untraced: a batch is no one order's trace.

        tests/crash/crashing_service.py kills the process here, between confirm and mark.
        """
        now = utcnow()
        sent = [row.id for row, r in zip(rows, results, strict=True) if r is None]
        failed = [(row, r) for row, r in zip(rows, results, strict=True) if r is not None]
        if len(sent) == 1:
            await session.execute(_MARK_ONE_SENT, {"row_id": sent[0], "now": now})
        elif sent:
            await session.execute(_MARK_SENT, {"ids": sent, "now": now})
        for row, exc in failed:
            # The row stays unpublished: `run` backs off and publishes it again.
            log.error("outbox: event %s not published (%s); kept for a retry",
                      row.event_id, exc)
            await session.execute(
                update(outbox_table)
                .where(outbox_table.c.id == row.id)
                .values(attempts=outbox_table.c.attempts + 1, last_error=str(exc)[:1000])
            )

    async def _exchange(self) -> aio_pika.abc.AbstractExchange:
        if self._channel is None or self._channel.is_closed:
            connection = await self._connect()
            # Checked passively, declared only if missing: a consumer that publishes through
            # its outbox has no right to configure the exchange (deploy/rabbitmq).
            await ensure_exchange(connection)
            self._channel = await open_confirm_channel(connection)
        return await self._channel.get_exchange(EXCHANGE, ensure=False)

    # --- Locks: several relays on one outbox ---------------------------------------------

    async def _shared_outbox(self) -> bool:
        """PostgreSQL: relays lock rows, so several may share the outbox. SQLite: one."""
        if self._shared is None:
            async with self._sessions() as session:
                dialect = session.get_bind().dialect.name
            self._shared = dialect == "postgresql"
            if not self._shared:
                log.info("outbox relay on %s: one relay per database; a second instance on "
                         "the same file would publish the same rows (use PostgreSQL to scale "
                         "out)", dialect)
        return self._shared

    @contextlib.asynccontextmanager
    async def _locking(self) -> AsyncIterator[AsyncSession]:
        """The transaction a batch is locked, published and marked in (PostgreSQL).

        Its commit releases the locks. If this process dies or the transaction is cut off
        (LOCK_TIMEOUT_MS idle), the locks go with it and another relay takes the rows; if
        it was cut off after the broker's ack, its mark fails and the row goes out twice
        (the inboxes absorb that), never zero times.
        """
        async with self._sessions() as session, session.begin():
            await session.execute(_LOCK_TIMEOUT)
            yield session

    # --- The hand-off: a speed seam ------------------------------------------------------
    # A use case that has just committed its rows holds them in memory: handed over, they
    # are published without being read back, and marked in one statement per batch. Without
    # it (outbox_store.NoHandOff) every row goes by the poll, with the same guarantees: the
    # poll stays the fallback for every row not handed over (another process's, one left by
    # a crash between commit and hand-off, one whose publish failed). Gain, measured together
    # with a producer's group commit (not apart): the producer's CPU per request at saturation 7.8
    # -> 3.9 ms, medians of alternated runs (docs/performance.md, "What each change
    # gained").

    def reserve(self, rows: Sequence[OutboxRow]) -> None:
        """`rows` are being committed by this process: the poll leaves them to `release`."""
        for row in rows:
            self._reserved[row.id] = row

    def release(self, rows: Sequence[OutboxRow], *, committed: bool) -> None:
        """After the transaction of `reserve`d rows: committed, publish them now (without
        reading them back); rolled back or unknown, forget them (the poll finds any that
        did commit)."""
        if committed:
            self._active = True
            self._lag.changed()
        if committed and len(self._handed) < HANDED_MAX_BATCHES * self._batch_size:
            self._handed.extend(rows)
            self._wake.set()
            return
        for row in rows:
            self._reserved.pop(row.id, None)
        if committed:
            # Publishing is stuck (no broker): leave the rows to the poll instead of holding
            # them all in memory; the poll runs first, so each order's rows stay in order.
            self._caught_up = False

    async def _publish_handed(self) -> None:
        """Publish one batch of handed rows from memory.

        On SQLite this relay is the only one: nothing is read. On PostgreSQL the rows are
        locked by id first (another relay's poll may hold or have sent some), and an order
        whose earlier row is unsent outside the batch waits: those rows go back to the poll.
        """
        batch = sorted(self._handed[: self._batch_size], key=lambda row: row.id)
        del self._handed[: self._batch_size]
        try:
            with untraced():
                if await self._shared_outbox():
                    async with self._locking() as session:
                        locked = set((await session.execute(
                            select(outbox_table.c.id)
                            .where(outbox_table.c.id.in_([row.id for row in batch]),
                                   outbox_table.c.published_at.is_(None))
                            .with_for_update(skip_locked=True))).scalars())
                        rows = await _first_of_each_order(
                            session, [row for row in batch if row.id in locked])
                        if len(rows) < len(batch):
                            self._caught_up = False  # the rest: the poll's, in their order
                        unconfirmed = await self._publish_and_mark(rows, session)
                else:
                    rows = batch
                    unconfirmed = await self._publish_and_mark(rows)
        except BaseException:
            self._caught_up = False  # not marked: the poll takes them
            raise
        finally:
            for row in batch:
                self._reserved.pop(row.id, None)
        _raise_if_unconfirmed(unconfirmed, len(rows))


class LagGauges:
    """The backlog gauges of one outbox: outbox_pending_rows and
    outbox_oldest_pending_age_seconds, read from the table."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], service: str):
        self._sessions = sessions
        self._service = service
        self._changed = asyncio.Event()
        self._pending = 0

    def changed(self) -> None:
        """Rows were committed or published: read the table again (within a second)."""
        self._changed.set()

    async def run(self) -> None:
        """Update the gauges until cancelled: every LAG_REPORT_SECONDS while rows are
        pending (the oldest one's age grows), else when `changed()` says they may be.

        On a task of its own: publishing can wait a long time for a broker that is not
        there (from the first second on), and the backlog gauges must not wait with it.
        """
        while True:
            self._changed.clear()
            try:
                await self.update()
            except Exception as exc:
                log.warning("outbox relay: lag gauges not updated: %s", exc)
                self._pending = -1  # unknown: try again in a second
            await asyncio.sleep(LAG_REPORT_SECONDS)  # at most once a second, under load too
            if self._pending == 0:
                await self._changed.wait()

    async def update(self) -> None:
        with untraced():
            async with self._sessions() as session:
                pending, oldest = (
                    await session.execute(
                        select(func.count(), func.min(outbox_table.c.created_at)).where(
                            outbox_table.c.published_at.is_(None)
                        )
                    )
                ).one()
        self._pending = pending
        metrics.OUTBOX_PENDING.labels(self._service).set(pending)
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        metrics.OUTBOX_OLDEST_AGE.labels(self._service).set(max(age, 0.0))


async def _first_of_each_order(
    session: AsyncSession, locked: Sequence[OutboxRow]
) -> list[OutboxRow]:
    """The locked rows no unsent row of the same order precedes outside this batch: an
    earlier event of the order is locked by another relay, so this one waits for it."""
    if not locked:
        return []
    mine = {row.id for row in locked}
    pending = await session.execute(
        select(outbox_table.c.id, outbox_table.c.order_id).where(
            outbox_table.c.published_at.is_(None),
            outbox_table.c.order_id.in_({row.order_id for row in locked}),
        )
    )
    held_elsewhere: dict[str, int] = {}
    for row_id, order_id in pending:
        if row_id not in mine:
            held_elsewhere[order_id] = min(row_id, held_elsewhere.get(order_id, row_id))
    return [row for row in locked if row.id < held_elsewhere.get(row.order_id, row.id + 1)]


@contextlib.contextmanager
def _in_trace_of(row: OutboxRow) -> Iterator[None]:
    """An "outbox relay" span in the trace of the request that wrote `row`, with its
    correlation id current: the relay's own task belongs to no request and runs untraced."""
    trace_token = context.attach(propagate.extract(json.loads(row.trace_context or "{}")))
    correlation_token = correlation.current.set(row.correlation_id)
    try:
        with tracer.start_as_current_span(
            "outbox relay", kind=SpanKind.INTERNAL,
            attributes={
                telemetry.ATTRIBUTE: row.correlation_id, telemetry.EVENT_ID: row.event_id,
                telemetry.ORDER_ID: row.order_id, telemetry.OUTBOX_ID: row.id,
                telemetry.EVENT_TYPE: row.event_type,
            },
        ):
            yield
    finally:
        correlation.current.reset(correlation_token)
        context.detach(trace_token)


# Built once: the compiled cache finds it by a key made once, not a statement built per batch.
def _mark_sent(which: ColumnElement[bool]) -> Update:
    return (update(outbox_table).where(which)
            .values(published_at=bindparam("now", type_=UtcDateTime()),
                    attempts=outbox_table.c.attempts + 1))


_MARK_SENT = _mark_sent(outbox_table.c.id.in_(bindparam("ids", expanding=True)))
# One row (a lone event): `=`, not an expanding `IN`, whose SQL is rewritten per execution.
_MARK_ONE_SENT = _mark_sent(outbox_table.c.id == bindparam("row_id"))


def _raise_if_unconfirmed(unconfirmed: Sequence[BaseException], attempted: int) -> None:
    """After the marks are committed: PublishFailed naming the first failure, so `run`
    backs off and the poll takes the unconfirmed rows again."""
    if unconfirmed:
        first = unconfirmed[0]
        raise PublishFailed(f"{len(unconfirmed)} of {attempted} not confirmed: {first}",
                            getattr(first, "error_type", "not-confirmed"))


_LOCK_TIMEOUT = text(
    f"SET LOCAL idle_in_transaction_session_timeout = '{LOCK_TIMEOUT_MS}ms'")


def _as_outbox_row(row: Row[Any]) -> OutboxRow:
    return OutboxRow(
        id=row.id, event_id=row.event_id, event_type=row.event_type,
        routing_key=row.routing_key, order_id=row.order_id, correlation_id=row.correlation_id,
        body=row.body, trace_context=row.trace_context, created_at=row.created_at,
    )
