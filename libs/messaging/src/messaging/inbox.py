"""The consumer side of exactly-once effects: inbox (dedupe) and per-order, per-stream order.

`Inbox.process` runs a handler inside one database transaction that also records the
event id and the order's applied sequence in the event's stream. Either the effect and its
record commit together, or neither does, so a redelivered event is recognised and changes
nothing. The rule (`decide`) is in docs/ordering.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import hashlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    ColumnElement,
    CompoundSelect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    insert,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts import EVENT_TYPES, Event, utcnow
from messaging.chassis.db import Statements, UtcDateTime, begin, delete_in_batches, engine_of
from messaging.spec import SideEffect, Subscriptions

if TYPE_CHECKING:
    from sqlalchemy import Update

log = logging.getLogger(__name__)

metadata = MetaData()

inbox_table = Table(
    "inbox",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("event_type", String(64), nullable=False),
    Column("order_id", String(36), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("processed_at", UtcDateTime, nullable=False, index=True),
    # SHA-256 of the event as applied: a later event with this id and other content is a
    # clash, not a duplicate. Empty on rows written before the column existed.
    Column("digest", String(64), nullable=True),
    # Which event holds a place in an order's history (the conflict check).
    Index("ix_inbox_order_sequence", "order_id", "sequence"),
)

# An event whose step outside the database (its mail) is running right now, committed
# BEFORE that step: a second copy in flight finds the claim and waits for the first one's
# outcome instead of sending the mail again (docs/exactly-once.md, "Copies in flight").
claims_table = Table(
    "inbox_claims",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("claimed_at", UtcDateTime, nullable=False, index=True),
)
# A claim older than this is taken over: its holder died mid-step. Longer than a mail's
# SMTP exchange (SMTP_TIMEOUT, 10 s, bounds each step of it); short enough that the copies
# of a SIGKILLed process's in-flight messages go out within a few retry delays.
CLAIM_LEASE = timedelta(seconds=30)

# The highest sequence applied per order and stream (each producer's own sequence; the
# contract says which stream an event type is in). Kept after the inbox forgets an event id,
# so a very late duplicate is still skipped as stale. (It replaced `order_progress`, one row
# per order, when a second producer came: a database from before keeps that table unused.)
order_progress_table = Table(
    "stream_progress",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("stream", String(32), primary_key=True),
    Column("last_sequence", Integer, nullable=False),
)

# The event types of each stream: an event's place (order, stream, sequence) in the inbox.
_STREAM_TYPES: dict[str, tuple[str, ...]] = {
    stream: tuple(name for name, t in EVENT_TYPES.items() if t.stream == stream)
    for stream in {t.stream for t in EVENT_TYPES.values()}
}


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # this event id was processed before
    CLASH = "clash"  # this event id was processed before, with other content: skipped, told
    STALE = "stale"  # an event at or below its stream's applied sequence
    IGNORED = "ignored"  # an event type the service has no subscription for: acked, not kept


class OutOfOrder(Exception):
    """An event it depends on has not been applied yet: try again later. By default its
    predecessor in its own stream (#applied + 1); or `waits_for` of another `stream`."""

    def __init__(self, event: Event, applied: int, stream: str | None = None,
                 waits_for: int | None = None):
        stream = stream or event.stream
        waits_for = waits_for if waits_for is not None else applied + 1
        # The place (order, stream, sequence) of the event this one waits for.
        self.awaited: tuple[str, str, int] | None = (str(event.order_id), stream, waits_for)
        super().__init__(
            f"{event.event_type} #{event.sequence} of order {event.order_id} waits for "
            f"#{waits_for} of {stream} (applied so far: {applied})"
        )


class InProgress(OutOfOrder):
    """Another copy of this event is running its step outside the database right now (its
    mail is being sent): wait, like an early event, and find it applied when back."""

    def __init__(self, event: Event):
        self.awaited = None  # its own copy, not a place: the in-flight wait covers it
        Exception.__init__(
            self, f"{event.event_type} {event.event_id}: another copy of it is being handled "
                  "(claimed); waiting for its outcome")


class Conflict(Exception):
    """A different event already holds this event's place in its order's history: two
    events claim to be the same step of one order. Never silently skipped (docs/ordering.md,
    "Conflicts")."""

    def __init__(self, event: Event, holder: str):
        super().__init__(
            f"{event.event_type} {event.event_id} claims #{event.sequence} of order "
            f"{event.order_id}, which event {holder} already holds")
        self.holder = holder


@dataclass(frozen=True)
class State:
    """What is committed about an event when it is decided on."""

    seen: bool  # its event id is in the inbox
    seen_digest: str | None = None  # the content it had then (None: not recorded)
    applied: int | None = None  # the order's applied sequence in the event's stream
    holder: str | None = None  # the event id in the inbox at the event's place, if any
    # The order's applied sequence in every stream (the event's causes are looked up here).
    progress: Mapping[str, int] = field(default_factory=dict)


def digest(event: Event) -> str:
    return hashlib.sha256(event.to_json()).hexdigest()


def decide(event: Event, state: State,
           subscriptions: Subscriptions | None = None) -> Outcome | None:
    """The one rule for an event, given what is committed: None = apply it now; an Outcome =
    skip it; raises OutOfOrder (its predecessor, or a cause, is not applied yet) or Conflict
    (another event holds its place). Pure, so it is tested without a database.
    docs/ordering.md:

      not subscribed                                  -> IGNORED (before any order check)
      its id seen                                     -> DUPLICATE (CLASH: other content)
      sequence <= its stream's applied sequence       -> STALE (Conflict: another holds it)
      sequence > applied + 1                          -> OutOfOrder (its predecessor)
      a cause (`after`) in a stream this service takes
        is not applied yet                            -> OutOfOrder (its cause)

    `subscriptions` None: a service that takes the event and the streams of its causes.
    """
    if subscriptions is not None and subscriptions.handler_for(event) is None:
        return Outcome.IGNORED
    if state.seen:
        if state.seen_digest is not None and state.seen_digest != digest(event):
            return Outcome.CLASH
        return Outcome.DUPLICATE
    if state.applied is not None and event.sequence <= state.applied:
        if state.holder == str(event.event_id):
            # This very event, committed by a competing copy between our reads (its id was
            # not there yet, its place was): a duplicate, not a conflict with itself.
            return Outcome.DUPLICATE
        if state.holder is not None:
            raise Conflict(event, state.holder)
        # Nobody we remember holds the place: a copy of an event the inbox has forgotten
        # (the dedupe window), or of one from before the place was recorded.
        return Outcome.STALE
    if event.sequence != (state.applied or 0) + 1:
        raise OutOfOrder(event, state.applied or 0)
    for stream, position in event.after:
        # A service that takes no event of the cause's stream has nothing to wait for.
        done = state.progress.get(stream, 0)
        takes = subscriptions is None or stream in subscriptions.streams
        if takes and done < position:
            raise OutOfOrder(event, done, stream, position)
    return None


async def despite_cancellation(work: Coroutine[Any, Any, Outcome]) -> Outcome:
    """Run `work` (an event's step outside the database and its record) to its end even when
    the caller is cancelled meanwhile, then let the cancellation through.

    aio-pika cancels a message's task when its channel closes (a broker restart, a dropped
    link). A mail cut off there may have gone out anyway: its end was written and the
    server's 250 was on its way. Released as "not sent", the redelivered copy would send it
    again; left claimed and unrecorded, the copy would send it again once the claim's lease
    ran out. Run to its end, the mail's outcome is known and recorded, and the copy finds a
    duplicate (or, after a failed send, claims it again). Bounded as the step is (every SMTP
    step by SMTP_TIMEOUT) and as any transaction is.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = cancelled or not task.done()
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


# An event's check and claim before its step (an outcome to skip it; None: claimed, go on),
# and its record (the handler and the inbox row, committed): `Inbox.process`'s two steps.
Claim = Callable[[Event], Awaitable["Outcome | None"]]
Record = Callable[[Event], Awaitable["Outcome"]]


class LostRace(Exception):
    """The order's applied sequence changed under us; the transaction is rolled back."""


class Inbox:
    """Applies events once and in order, each with the handler its Subscriptions name for it.

    One path: `process` is the check and claim (when the subscription has a step outside
    the database), the step, and then `apply`, which commits a batch of one; a batcher
    (messaging/speed/inbox_batching.py) runs the same `process` with the claims and records
    of several events grouped (`claim_batch`, `process_batch`: the same code).
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    @cached_property
    def _engine(self) -> AsyncEngine:
        """Each event's transactions run on a Core connection of the sessions' engine: no
        ORM session is made per transaction, as no ORM object is ever loaded here. Measured
        against ORM sessions (SQLite, one event at a time, a handler that writes nothing,
        alternated runs): 640-730 -> 570-600 us of CPU per `Inbox.process`."""
        return engine_of(self._sessions)

    async def process(self, event: Event, subscriptions: Subscriptions, *,
                      claim: Claim | None = None, record: Record | None = None) -> Outcome:
        """Apply `event` once and in order; its handler writes the effect in our transaction.

        The one path of every event: an event nobody subscribed to is ignored; else, when
        its subscription has a `before` step (an effect outside the database: sending a
        mail), a check that the event is new and next in line and its claim (`claim`), the
        step, then the record (`record`: the handler and the inbox row, one transaction);
        without a step, the record alone. The step runs before the transaction, so no
        database connection waits on the network. If the process dies after it and before
        the commit, the redelivery does it again: at least once, never lost.

        `claim` and `record` are this inbox's own (`claim`, `apply`: a transaction each)
        unless given: the batcher (messaging/speed/inbox_batching.py) passes grouped ones.
        """
        if subscriptions.handler_for(event) is None:
            return decide(event, State(seen=False), subscriptions) or Outcome.IGNORED
        claim = claim or partial(self.claim, subscriptions=subscriptions)
        record = record or partial(self.apply, subscriptions=subscriptions)
        before = subscriptions.before_for(event)
        if before is None:
            return await record(event)
        early = await claim(event)
        if early is not None:
            return early
        return await self.step_then_record(event, before, partial(record, event))

    async def step_then_record(self, event: Event, before: SideEffect,
                               record: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """The claimed event's step outside the database (its mail), then `record` (its
        commit), as one piece that a cancellation of the caller does not cut short
        (`despite_cancellation`)."""

        async def step_and_record() -> Outcome:
            await self.run_before(event, before)
            return await record()

        return await despite_cancellation(step_and_record())

    async def claim(self, event: Event, subscriptions: Subscriptions) -> Outcome | None:
        """Decide on what is committed (an outcome to skip the event; OutOfOrder or Conflict
        raised) and, when it is to be applied now, claim it: the check and the claim in one
        transaction, one commit, before the step outside the database."""
        try:
            async with begin(self._engine) as conn:
                state = await _state(conn, event)
                early = decide(event, state, subscriptions)
                if early is not None:
                    return early
                await conn.execute(_CLAIM, {"event_id": str(event.event_id),
                                            "claimed_at": utcnow()})
        except IntegrityError:
            await self._take_over_claim(event)
        return None

    async def claim_batch(self, events: Sequence[Event],
                          subscriptions: Subscriptions) -> list[bool]:
        """`claim` for several events in ONE transaction: True for each event that is to be
        applied now (new, next in line, its causes applied), claimed here. False for any
        other: nothing is claimed for it, and its caller decides it alone (`claim`), so its
        outcome or exception is exactly its own. A claim already held by another copy
        (IntegrityError) rolls the whole batch back and propagates."""
        async with begin(self._engine) as conn:
            view = await _BatchView.load(conn, events)
            ready = []
            for event in events:
                try:
                    ready.append(decide(event, await view.state(conn, event),
                                        subscriptions) is None)
                except (OutOfOrder, Conflict):
                    ready.append(False)
            now = utcnow()
            claims = [{"event_id": str(event.event_id), "claimed_at": now}
                      for event, claimed in zip(events, ready, strict=True) if claimed]
            if claims:
                await conn.execute(_CLAIM, claims)
            return ready

    async def run_before(self, event: Event, before: SideEffect) -> None:
        """The claimed event's step outside the database (its mail). If it fails, the claim
        is released: the next copy (the retry of this one) claims it again. If it is
        cancelled (only the event loop's end cancels it: `step_then_record`), whether its
        effect happened is not known: the claim stays until its lease ends."""
        try:
            await before(event)
        except Exception:
            with contextlib.suppress(Exception):
                await self._release(event)
            raise

    async def _take_over_claim(self, event: Event) -> None:
        """Another copy holds a claim on the event (in this process or another instance: the
        claim is a row of the shared database). Take it over if its holder died mid-step
        (older than CLAIM_LEASE); else raise InProgress."""
        event_id, now = str(event.event_id), utcnow()
        async with begin(self._engine) as conn:
            taken = await conn.execute(
                update(claims_table)
                .where(claims_table.c.event_id == event_id,
                       claims_table.c.claimed_at < now - CLAIM_LEASE)
                .values(claimed_at=now)
            )
        if taken.rowcount == 1:
            log.warning("took over the claim on %s: its holder did not finish within %s",
                        event_id, CLAIM_LEASE)
            return
        raise InProgress(event)

    async def _release(self, event: Event) -> None:
        async with begin(self._engine) as conn:
            await conn.execute(
                delete(claims_table).where(claims_table.c.event_id == str(event.event_id)))

    async def apply(self, event: Event, subscriptions: Subscriptions) -> Outcome:
        """The transaction part of `process`: a batch of one, or nothing."""
        try:
            [outcome] = await self.process_batch([event], subscriptions)
            return outcome
        except (IntegrityError, LostRace):
            # A competing consumer committed this event, or another event of the order,
            # between our check and our commit; ours rolled back. Decide again on what is
            # committed now: a duplicate or stale outcome, or (rarely) a genuine error.
            if await self.seen(str(event.event_id)):
                return Outcome.DUPLICATE
            try:
                [outcome] = await self.process_batch([event], subscriptions)
                return outcome
            except LostRace:
                raise RuntimeError(f"order {event.order_id} kept changing; retry later") from None

    async def process_batch(
        self,
        events: Sequence[Event],
        subscriptions: Subscriptions,
        *,
        contexts: Sequence[contextvars.Context] | None = None,
    ) -> list[Outcome]:
        """Apply events in ONE transaction, one after the other in the given order, each by
        the same rule (a later event of an order sees the earlier one's progress; a repeated
        event id is a duplicate). Whatever any of them raises (OutOfOrder, a handler error,
        IntegrityError, a lost race) rolls back the whole batch and propagates: nothing is
        committed, and the caller applies each on its own.

        The inbox's own statements are per batch, not per event: one read of the seen ids
        and the orders' progress, then (after every handler) one insert of the inbox rows
        and one write per kind of progress change. Only the handlers run per event.

        `contexts[i]`, when given, is the context (trace span, correlation id) that event
        i's work runs in: its handler's statements and spans belong to its own message.
        """
        async with begin(self._engine) as conn:
            view = await _BatchView.load(
                conn, [e for e in events if subscriptions.handler_for(e) is not None])
            outcomes = []
            for i, event in enumerate(events):
                work = _apply_in(conn, view, event, subscriptions)
                if contexts is None:
                    outcomes.append(await work)
                else:
                    outcomes.append(await asyncio.create_task(work, context=contexts[i]))
            await view.write(conn)
            return outcomes

    async def seen(self, event_id: str) -> bool:
        async with self._engine.connect() as conn:
            return (await conn.execute(_EXISTS, {"event_id": event_id})).first() is not None

    async def forget_older_than(
        self, age: timedelta, now: datetime | None = None, batch: int = 1000
    ) -> int:
        """Drop inbox records older than `age`, in batches; returns how many.
        See docs/exactly-once.md, 'The dedupe window'."""
        cutoff = (now or utcnow()) - age
        await delete_in_batches(  # claims of events long applied (or long abandoned)
            self._sessions, claims_table.c.event_id, claims_table.c.claimed_at < cutoff, batch
        )
        return await delete_in_batches(
            self._sessions, inbox_table.c.event_id, inbox_table.c.processed_at < cutoff, batch
        )


# The inbox's statements, built once: SQLAlchemy's compiled cache then finds each by a cache
# key computed once, instead of building and keying a new statement per event.
#
# The seen ids of a batch and the progress of its orders, in one round trip: rows
# ('seen', event id, digest, NULL) and ('progress', order id, stream, last sequence).
def _seen_and_progress(seen: ColumnElement[bool],
                       ordered: ColumnElement[bool]) -> CompoundSelect[Any]:
    return union_all(
        select(literal_column("'seen'").label("kind"), inbox_table.c.event_id.label("key"),
               inbox_table.c.digest.label("detail"), null().label("last_sequence"))
        .where(seen),
        select(literal_column("'progress'"), order_progress_table.c.order_id,
               order_progress_table.c.stream, order_progress_table.c.last_sequence)
        .where(ordered),
    )


_SEEN_AND_PROGRESS = _seen_and_progress(
    inbox_table.c.event_id.in_(bindparam("event_ids", expanding=True)),
    order_progress_table.c.order_id.in_(bindparam("order_ids", expanding=True)))
# The same for one event (the lone path): `=`, not an expanding `IN`, whose SQL SQLAlchemy
# rewrites on every execution (a lone `Inbox.process` on SQLite: 365 -> 315 us of CPU).
_SEEN_AND_PROGRESS_OF_ONE = _seen_and_progress(
    inbox_table.c.event_id == bindparam("event_id"),
    order_progress_table.c.order_id == bindparam("order_id"))
_HOLDER = select(inbox_table.c.event_id).where(
    inbox_table.c.order_id == bindparam("order_id"),
    inbox_table.c.sequence == bindparam("sequence"),
    # Its place is in its own stream: OrderShipped #1 is not OrderPaid's place.
    inbox_table.c.event_type.in_(bindparam("event_types", expanding=True)),
).limit(1)
_EXISTS = select(inbox_table.c.event_id).where(inbox_table.c.event_id == bindparam("event_id"))
_RECORD = insert(inbox_table)
_CLAIM = insert(claims_table)
_START_PROGRESS = insert(order_progress_table)

_Place = tuple[str, str, int]  # order id, stream, sequence


@dataclass
class _BatchView:
    """What is committed about a batch's events, read in one query, then kept up to date
    with the batch's own applied events, so each event is decided as if the ones before it
    had been written; and the rows those applied events add, written at the end."""

    seen: dict[str, str | None]  # event id -> digest: committed, or applied in this batch
    progress: dict[str, dict[str, int]]  # order id -> stream -> applied sequence
    # The applied sequence as read, per (order, stream): the progress write is conditional
    # on it, so a competing consumer that moved it meanwhile makes this batch roll back.
    read: dict[tuple[str, str], int]
    places: dict[_Place, str] = field(default_factory=dict)  # applied in this batch
    records: list[dict[str, object]] = field(default_factory=list)  # inbox rows to insert

    @classmethod
    async def load(cls, conn: Statements, events: Sequence[Event]) -> _BatchView:
        seen: dict[str, str | None] = {}
        progress: dict[str, dict[str, int]] = {}
        if events:
            # Progress of every order, even one whose events all turn out seen (which need
            # none): it comes in the same round trip.
            event_ids = sorted({str(e.event_id) for e in events})
            order_ids = sorted({str(e.order_id) for e in events})
            if len(event_ids) == len(order_ids) == 1:
                rows = await conn.execute(_SEEN_AND_PROGRESS_OF_ONE, {
                    "event_id": event_ids[0], "order_id": order_ids[0]})
            else:
                rows = await conn.execute(_SEEN_AND_PROGRESS, {
                    "event_ids": event_ids, "order_ids": order_ids})
            for kind, key, detail, last in rows.tuples():
                if kind == "seen":
                    seen[key] = detail
                else:
                    progress.setdefault(key, {})[detail] = last
        read = {(order, stream): last
                for order, streams in progress.items() for stream, last in streams.items()}
        return cls(seen=seen, progress=progress, read=read)

    async def state(self, conn: Statements, event: Event) -> State:
        """What is committed about the event, as `decide` takes it. The holder of its place
        is looked up only when the order is already past it (the rare path)."""
        event_id, order_id = str(event.event_id), str(event.order_id)
        if event_id in self.seen:
            return State(seen=True, seen_digest=self.seen[event_id])
        progress = self.progress.get(order_id, {})
        applied = progress.get(event.stream)
        holder = None
        if applied is not None and event.sequence <= applied:
            holder = self.places.get((order_id, event.stream, event.sequence))
            if holder is None:
                holder = (await conn.execute(_HOLDER, {
                    "order_id": order_id, "sequence": event.sequence,
                    "event_types": list(_STREAM_TYPES[event.stream])})).scalar()
        return State(seen=False, applied=applied, holder=holder, progress=dict(progress))

    def applied(self, event: Event) -> None:
        """Note an applied event: the later events of the batch see it, the write has it."""
        event_id, order_id = str(event.event_id), str(event.order_id)
        event_digest = digest(event)
        self.seen[event_id] = event_digest
        self.progress.setdefault(order_id, {})[event.stream] = event.sequence
        self.places[(order_id, event.stream, event.sequence)] = event_id
        self.records.append({
            "event_id": event_id, "event_type": event.event_type, "order_id": order_id,
            "sequence": event.sequence, "processed_at": utcnow(), "digest": event_digest,
        })

    async def write(self, conn: Statements) -> None:
        """The inbox rows and the progress of every (order, stream) the batch moved, in one
        statement each. A competing consumer that recorded one of these events, started a
        progress row, or moved one since `read`, makes this raise (IntegrityError or
        LostRace): the transaction rolls back."""
        if not self.records:
            return
        await conn.execute(_RECORD, self.records)
        moved = {(order, stream): last for order, streams in self.progress.items()
                 for stream, last in streams.items()
                 if self.read.get((order, stream)) != last}
        started = [{"order_id": order, "stream": stream, "last_sequence": last}
                   for (order, stream), last in moved.items() if (order, stream) not in self.read]
        if started:
            await conn.execute(_START_PROGRESS, started)
        updated = {key: last for key, last in moved.items() if key in self.read}
        if updated:
            result = await conn.execute(_move_progress(self.read, updated))
            if result.rowcount != len(updated):
                raise LostRace()


def _move_progress(read: Mapping[tuple[str, str], int],
                   updated: Mapping[tuple[str, str], int]) -> Update:
    """One UPDATE for every (order, stream) moved: each row to its new sequence, each only
    from the sequence this batch read (a single statement: its row count is exact on every
    driver, which an executemany's is not on asyncpg)."""
    t = order_progress_table

    def row(order: str, stream: str) -> ColumnElement[bool]:
        return and_(t.c.order_id == order, t.c.stream == stream)

    return (
        update(t)
        .where(or_(*(and_(row(*key), t.c.last_sequence == read[key]) for key in updated)))
        .values(last_sequence=case(*((row(*key), last) for key, last in updated.items()),
                                   else_=t.c.last_sequence))
    )


async def _state(conn: Statements, event: Event) -> State:
    """What is committed about one event (the read-only check before a `before` step)."""
    return await (await _BatchView.load(conn, [event])).state(conn, event)


async def _apply_in(conn: Statements, view: _BatchView, event: Event,
                    subscriptions: Subscriptions) -> Outcome:
    """Decide and run the handler for one event, in the caller's transaction; its inbox
    row and progress go into `view`, which the batch writes after its last event."""
    handler = subscriptions.handler_for(event)
    if handler is None:  # an event type nobody subscribed to: ignored, nothing read or kept
        return decide(event, State(seen=False), subscriptions) or Outcome.IGNORED
    early = decide(event, await view.state(conn, event), subscriptions)
    if early is not None:
        return early
    await handler(event, conn)
    view.applied(event)
    return Outcome.APPLIED


