"""The producer side of exactly-once effects: the transactional outbox and its relay.

The service writes its state change and the event row in one transaction (`add_to_outbox`).
`OutboxRelay` publishes unsent rows with publisher confirms and marks them sent only after
the broker's ack. A crash between the ack and the mark republishes the event: at least
once on the wire, and the consumers' inboxes make it exactly once in effect.

Two ways in. A use case that hands its rows over (`OutboxHandOff`: `reserve` before its
commit, `release` after) has them published from memory, without reading them back, and
marked in one statement per batch. Everything else (rows written by another process or
instance, rows left by a crash between commit and hand-off, rows whose publish failed, rows
staged by a consumer's handler with `notify()`) is found by the poll: on start, on
`notify()`, after a failure and every `poll_interval`. Handed rows wait while the poll has
something to catch up on, so an order's older unsent row still leaves first.

On PostgreSQL several relays (several instances of the producing service) share one
outbox: each claims its batch with `FOR UPDATE SKIP LOCKED` in a transaction that lasts
until the rows are marked,
and skips a row while an earlier unsent row of the same order is held by another relay, so
an order's events still leave in order. A relay that dies loses its transaction, and with it
its claims, at once. On SQLite there is one relay per database (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import Token
from datetime import timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from sqlalchemy import Row, Select, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import utcnow
from messaging.chassis.db import delete_in_batches
from messaging.observability import correlation, metrics, telemetry
from messaging.observability.telemetry import untraced
from messaging.outbox_store import OutboxRow, outbox_table

# TRANSITIONAL, to delete when issue 23's branches are merged: chassis/app.py and
# services/payment (edited on other branches) still read `outbox.metadata` and
# `outbox.outbox_table`; their home is messaging.outbox_store, every other importer uses it.
from messaging.outbox_store import metadata as metadata
from messaging.publisher import (
    PublishFailed,
    build_message,
    open_confirm_channel,
    publish_confirmed,
)
from messaging.topology import EXCHANGE, ensure_exchange

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# A claim (the relay's open transaction) idle longer than this is cut off by PostgreSQL and
# its rows go to another relay: well above one batch's publish time (PUBLISH_TIMEOUT_SECONDS).
CLAIM_TIMEOUT_MS = 30_000


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


# Handed rows held in memory at most, in batches; beyond, the rows are left to the poll.
HANDED_MAX_BATCHES = 10

# How often the backlog gauges (outbox_pending_rows, outbox_oldest_pending_age_seconds) are
# read from the table, whatever the relay is doing.
LAG_REPORT_SECONDS = 1.0


class OutboxRelay:
    """Publishes outbox rows: woken right after a commit, polling as a fallback."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        connect: Callable[[], Awaitable[AbstractRobustConnection]],
        *,
        service: str = "producer",  # the `service` label of its metrics
        batch_size: int = 200,
        poll_interval: float = 1.0,
        # Low on purpose: after a broker outage the relay resumes within this many seconds.
        max_backoff: float = 5.0,
    ):
        self._sessions = sessions
        self._connect = connect
        self._service = service
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._wake = asyncio.Event()
        self._channel: AbstractChannel | None = None
        self._shared: bool | None = None
        # Rows a use case is committing or has committed and handed over, by id: the poll
        # leaves them to the hand-off. `_handed`: those committed, in hand-off order.
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
        self._wake.set()

    def reserve(self, rows: Sequence[OutboxRow]) -> None:
        """`rows` are being committed by this process: the poll leaves them to `release`."""
        for row in rows:
            self._reserved[row.id] = row

    def release(self, rows: Sequence[OutboxRow], *, committed: bool) -> None:
        """After the transaction of `reserve`d rows: committed, publish them now (without
        reading them back); rolled back or unknown, forget them (the poll finds any that
        did commit)."""
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

    async def run(self) -> None:
        """Relay until cancelled; the lag gauges are kept true alongside, every second."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._report_lag(), name=f"{self._service}-outbox-lag")
            await self._relay()

    async def _report_lag(self) -> None:
        # On a task of its own: publishing can wait a long time for a broker that is not
        # there (from the first second on), and the backlog gauges must not wait with it.
        while True:
            try:
                await self._update_lag_metrics()
            except Exception as exc:
                log.warning("outbox relay: lag gauges not updated: %s", exc)
            await asyncio.sleep(LAG_REPORT_SECONDS)

    async def _relay(self) -> None:
        backoff = self._poll_interval
        next_poll = 0.0
        while True:
            try:
                # The poll every poll_interval even under a steady stream of hand-offs:
                # rows of other instances and crashes must not wait for a quiet moment.
                if not self._caught_up or time.monotonic() >= next_poll:
                    self._caught_up = True  # a notify() from now on asks for another poll
                    next_poll = time.monotonic() + self._poll_interval
                    while (await self._poll())[0] == self._batch_size:
                        pass  # a full batch read: there may be more
                while self._handed and self._caught_up:
                    await self._publish_handed()
                backoff = self._poll_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._caught_up = False  # what failed is the poll's again
                log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                # A hand-off that came while this round ran was taken by it (or is the
                # poll's now): only a later one may cut the backoff short.
                self._wake.clear()
                await self._wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if self._caught_up:
                await self._wait(max(next_poll - time.monotonic(), 0.0))

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
        return (await self._poll())[1]

    async def _poll(self) -> tuple[int, int]:
        """One batch read from the table: (rows read, rows published or attempted)."""
        if await self._shared_outbox():
            read, rows, results = await self._publish_claimed()
        else:
            read, rows, results = await self._publish_unclaimed()
        await self._update_lag_metrics()
        self._raise_unconfirmed(rows, results)
        return read, len(rows)

    @staticmethod
    def _raise_unconfirmed(rows: Sequence[OutboxRow],
                           results: Sequence[BaseException | None]) -> None:
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise PublishFailed(f"{len(failures)} of {len(rows)} not confirmed: {failures[0]}",
                                getattr(failures[0], "error_type", "not-confirmed"))

    def _unsent_unreserved(self) -> Select[Any]:
        """The poll's batch: the oldest unsent rows, without those reserved for a hand-off
        (which must not fill the batch and hide the rows behind them)."""
        query = self._unsent().limit(self._batch_size)
        if self._reserved:
            query = query.where(outbox_table.c.id.not_in(list(self._reserved)))
        return query

    def _not_reserved(self, rows: Sequence[Row[Any]]) -> list[OutboxRow]:
        """The rows read that no hand-off of this process is about to publish (reserved
        while the read was under way)."""
        return [_as_outbox_row(row) for row in rows if row.id not in self._reserved]

    async def _publish_unclaimed(
        self,
    ) -> tuple[int, list[OutboxRow], Sequence[BaseException | None]]:
        """SQLite: the only relay of its database reads, publishes, then marks."""
        with untraced():  # polling: no trace per poll
            async with self._sessions() as session:
                read = (await session.execute(self._unsent_unreserved())).all()
        rows = self._not_reserved(read)
        if not rows:
            return len(read), [], []
        results = await self._publish_rows(rows)
        with untraced():
            async with self._sessions() as session, session.begin():
                await self._record(session, rows, results)
        return len(read), rows, results

    async def _publish_handed(self) -> None:
        """Publish one batch of handed rows from memory and mark them in one statement.

        On SQLite this relay is the only one: nothing is read. On PostgreSQL the rows are
        claimed by id first (another relay's poll may hold or have sent some), and an order
        whose earlier row is unsent outside the batch waits: those rows go back to the poll.
        """
        batch = sorted(self._handed[: self._batch_size], key=lambda row: row.id)
        del self._handed[: self._batch_size]
        try:
            if await self._shared_outbox():
                rows, results = await self._publish_handed_claimed(batch)
            else:
                rows = batch
                results = await self._publish_rows(rows)
                with untraced():
                    async with self._sessions() as session, session.begin():
                        await self._record(session, rows, results)
        except BaseException:
            self._caught_up = False  # not marked: the poll takes them
            raise
        finally:
            for row in batch:
                self._reserved.pop(row.id, None)
        self._raise_unconfirmed(rows, results)

    async def _publish_handed_claimed(
        self, batch: Sequence[OutboxRow]
    ) -> tuple[list[OutboxRow], Sequence[BaseException | None]]:
        with untraced():
            async with self._sessions() as session, session.begin():
                await session.execute(_CLAIM_TIMEOUT)
                held = set((await session.execute(
                    select(outbox_table.c.id)
                    .where(outbox_table.c.id.in_([row.id for row in batch]),
                           outbox_table.c.published_at.is_(None))
                    .with_for_update(skip_locked=True)
                )).scalars())
                rows = await self._first_of_each_order(
                    session, [row for row in batch if row.id in held])
                if len(rows) < len(batch):
                    self._caught_up = False  # the rest: the poll's, in their order
                if not rows:
                    return [], []
                results = await self._publish_rows(rows)
                await self._record(session, rows, results)
        return rows, results

    async def _publish_claimed(
        self,
    ) -> tuple[int, list[OutboxRow], Sequence[BaseException | None]]:
        """PostgreSQL: claim, publish and mark in one transaction shared with no other relay.

        The row locks are the claim. If this process dies or its transaction is cut off
        (CLAIM_TIMEOUT idle), the locks go with it and another relay takes the rows; if it
        was cut off after the broker's ack, its mark fails and the row goes out twice (the
        inboxes absorb that), never zero times.
        """
        with untraced():
            async with self._sessions() as session, session.begin():
                await session.execute(_CLAIM_TIMEOUT)
                claimed = (await session.execute(
                    self._unsent_unreserved().with_for_update(skip_locked=True)
                )).all()
                rows = await self._first_of_each_order(session, self._not_reserved(claimed))
                if not rows:
                    return len(claimed), [], []
                results = await self._publish_rows(rows)
                await self._record(session, rows, results)
        return len(claimed), rows, results

    async def _shared_outbox(self) -> bool:
        """PostgreSQL: relays claim rows, so several may share the outbox. SQLite: one."""
        if self._shared is None:
            async with self._sessions() as session:
                dialect = session.get_bind().dialect.name
            self._shared = dialect == "postgresql"
            if not self._shared:
                log.info("outbox relay on %s: one relay per database; a second instance on "
                         "the same file would publish the same rows (use PostgreSQL to scale "
                         "out)", dialect)
        return self._shared

    @staticmethod
    def _unsent() -> Select[Any]:
        return (select(outbox_table).where(outbox_table.c.published_at.is_(None))
                .order_by(outbox_table.c.id))

    @staticmethod
    async def _first_of_each_order(
        session: AsyncSession, claimed: Sequence[OutboxRow]
    ) -> list[OutboxRow]:
        """The claimed rows no unsent row of the same order precedes outside this claim: an
        earlier event of the order is held by another relay, so this one waits for it."""
        if not claimed:
            return []
        mine = {row.id for row in claimed}
        pending = await session.execute(
            select(outbox_table.c.id, outbox_table.c.order_id).where(
                outbox_table.c.published_at.is_(None),
                outbox_table.c.order_id.in_({row.order_id for row in claimed}),
            )
        )
        held_elsewhere: dict[str, int] = {}
        for row_id, order_id in pending:
            if row_id not in mine:
                held_elsewhere[order_id] = min(row_id, held_elsewhere.get(order_id, row_id))
        return [row for row in claimed
                if row.id < held_elsewhere.get(row.order_id, row.id + 1)]

    async def _publish_rows(self, rows: Sequence[OutboxRow]) -> list[BaseException | None]:
        exchange = await self._exchange()
        # Publishes are pipelined: one confirm round-trip per batch, not per row.
        return await asyncio.gather(
            *(self._publish_row(exchange, row) for row in rows), return_exceptions=True
        )

    async def _exchange(self) -> aio_pika.abc.AbstractExchange:
        if self._channel is None or self._channel.is_closed:
            connection = await self._connect()
            # Checked passively, declared only if missing: a consumer that publishes through
            # its outbox has no right to configure the exchange (deploy/rabbitmq).
            await ensure_exchange(connection)
            self._channel = await open_confirm_channel(connection)
        return await self._channel.get_exchange(EXCHANGE, ensure=False)

    async def _publish_row(self, exchange: aio_pika.abc.AbstractExchange,
                           row: OutboxRow) -> None:
        parent = propagate.extract(json.loads(row.trace_context or "{}"))
        # This runs in the relay's own task: make the row's correlation id current for the
        # spans (publish) and log lines made under it.
        token = correlation.current.set(row.correlation_id)
        with _reset_on_exit(token), tracer.start_as_current_span(
            "outbox relay", context=parent, kind=SpanKind.INTERNAL,
            attributes={
                telemetry.ATTRIBUTE: row.correlation_id, telemetry.EVENT_ID: row.event_id,
                telemetry.ORDER_ID: row.order_id, telemetry.OUTBOX_ID: row.id,
                telemetry.EVENT_TYPE: row.event_type,
            },
        ):
            message = build_message(
                row.body.encode(),
                message_id=row.event_id,
                correlation_id=row.correlation_id,
                event_type=row.event_type,
                timestamp=row.created_at,
            )
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

    async def _record(
        self, session: AsyncSession, rows: Sequence[OutboxRow],
        results: Sequence[BaseException | None],
    ) -> None:
        """Mark what the broker confirmed; count the attempt on what it did not (one update
        per batch, not part of any one order's trace: callers run it untraced)."""
        now = utcnow()
        sent = [row.id for row, r in zip(rows, results, strict=True) if r is None]
        failed = [(row, r) for row, r in zip(rows, results, strict=True) if r is not None]
        if sent:
            await session.execute(
                update(outbox_table)
                .where(outbox_table.c.id.in_(sent))
                .values(published_at=now, attempts=outbox_table.c.attempts + 1)
            )
        for row, exc in failed:
            # The row stays unpublished: `run` backs off and publishes it again.
            log.error("outbox: event %s not published (%s); kept for a retry",
                      row.event_id, exc)
            await session.execute(
                update(outbox_table)
                .where(outbox_table.c.id == row.id)
                .values(attempts=outbox_table.c.attempts + 1, last_error=str(exc)[:1000])
            )

    async def _update_lag_metrics(self) -> None:
        with untraced():
            async with self._sessions() as session:
                pending, oldest = (
                    await session.execute(
                        select(func.count(), func.min(outbox_table.c.created_at)).where(
                            outbox_table.c.published_at.is_(None)
                        )
                    )
                ).one()
        metrics.OUTBOX_PENDING.labels(self._service).set(pending)
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        metrics.OUTBOX_OLDEST_AGE.labels(self._service).set(max(age, 0.0))


_CLAIM_TIMEOUT = text(
    f"SET LOCAL idle_in_transaction_session_timeout = '{CLAIM_TIMEOUT_MS}ms'")


def _as_outbox_row(row: Row[Any]) -> OutboxRow:
    return OutboxRow(
        id=row.id, event_id=row.event_id, event_type=row.event_type,
        routing_key=row.routing_key, order_id=row.order_id, correlation_id=row.correlation_id,
        body=row.body, trace_context=row.trace_context, created_at=row.created_at,
    )


@contextlib.contextmanager
def _reset_on_exit(token: Token[str | None]) -> Iterator[None]:
    try:
        yield
    finally:
        correlation.current.reset(token)
