"""The console's tables and queries: dead letters, replay jobs, the audit trail.

One row per dead letter (a work queue's event that was parked): when the same event is
parked again after a replay, its row is updated (last failure, error, status back to
`parked`), so its history (first failure, replay count) stays in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import utcnow
from messaging.chassis.db import UtcDateTime, delete_in_batches

Sessions = async_sessionmaker[AsyncSession]

PARKED, REPLAYING, REPLAYED, ARCHIVED = "parked", "replaying", "replayed", "archived"
STATUSES = (PARKED, REPLAYING, REPLAYED, ARCHIVED)
# What a replay may take: a replayed dead letter can be replayed again (the inbox makes a
# second delivery of an applied event a no-op); an archived one only after it is parked again.
REPLAYABLE = (PARKED, REPLAYED)

metadata = MetaData()

dead_letters = Table(
    "console_dead_letters", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(64), nullable=False),
    Column("queue", String(255), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("order_id", String(128), nullable=True),
    Column("correlation_id", String(128), nullable=True),
    Column("traceparent", String(128), nullable=True),
    Column("error_class", String(32), nullable=False),
    Column("error_type", String(128), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("fingerprint", String(16), nullable=False),
    Column("title", Text, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("content_type", String(128), nullable=True),
    Column("content_encoding", String(64), nullable=True),
    Column("published_at", UtcDateTime, nullable=True),
    Column("first_failed_at", UtcDateTime, nullable=False),
    Column("last_failed_at", UtcDateTime, nullable=False),
    Column("last_replayed_at", UtcDateTime, nullable=True),
    Column("replay_count", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False),
    UniqueConstraint("queue", "event_id", name="uq_console_dead_letter"),
    Index("ix_console_dead_letters_group", "fingerprint", "status"),
    Index("ix_console_dead_letters_status", "status", "last_failed_at"),
)

replays = Table(
    "console_replays", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", String(128), nullable=False),  # "group 3f1a..." or "dead letter 12"
    Column("user", String(64), nullable=False),
    Column("rate_per_second", Float, nullable=False),
    Column("batch", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False),  # running | finished | stopped | failed
    Column("error", Text, nullable=True),
    Column("started_at", UtcDateTime, nullable=False),
    Column("ended_at", UtcDateTime, nullable=True),
)

audit = Table(
    "console_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False, index=True),
    Column("user", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(128), nullable=False),
    Column("detail", Text, nullable=False),
)


@dataclass(frozen=True)
class Incoming:
    """A dead letter as taken from a DLQ, ready to store."""

    service: str
    queue: str
    event_id: str
    event_type: str
    order_id: str | None
    correlation_id: str | None
    traceparent: str | None
    error_class: str
    error_type: str
    error_message: str
    fingerprint: str
    title: str
    headers: dict[str, Any]
    body: bytes
    content_type: str | None
    content_encoding: str | None
    published_at: datetime | None
    failed_at: datetime


async def park(sessions: Sessions, batch: Sequence[Incoming]) -> int:
    """Store a batch in one transaction; returns how many were new or parked anew.

    A dead letter already stored (same queue and event id) is parked again only when this
    failure is later than the last one known: the broker redelivering a copy whose ack was
    lost is not a new failure.
    """
    if not batch:
        return 0
    changed = 0
    async with sessions() as session, session.begin():
        rows = await session.execute(
            select(dead_letters.c.id, dead_letters.c.queue, dead_letters.c.event_id,
                   dead_letters.c.last_failed_at)
            .where(dead_letters.c.event_id.in_({d.event_id for d in batch})))
        known = {(r.queue, r.event_id): r for r in rows}
        new: dict[tuple[str, str], dict[str, Any]] = {}
        for d in batch:
            key = (d.queue, d.event_id)
            if key in new:  # twice in one batch: keep the later failure
                if d.failed_at >= new[key]["last_failed_at"]:
                    first = new[key]["first_failed_at"]
                    new[key] = {**_values(d), "first_failed_at": first}
                continue
            row = known.get(key)
            if row is None:
                new[key] = {**_values(d), "first_failed_at": d.failed_at, "replay_count": 0,
                            "status": PARKED}
                changed += 1
            elif d.failed_at > row.last_failed_at:
                await session.execute(update(dead_letters).where(dead_letters.c.id == row.id)
                                      .values(**_values(d), status=PARKED))
                changed += 1
        if new:
            await session.execute(insert(dead_letters), list(new.values()))
    return changed


def _values(d: Incoming) -> dict[str, Any]:
    return {
        "service": d.service, "queue": d.queue, "event_id": d.event_id,
        "event_type": d.event_type, "order_id": d.order_id, "correlation_id": d.correlation_id,
        "traceparent": d.traceparent, "error_class": d.error_class, "error_type": d.error_type,
        "error_message": d.error_message, "fingerprint": d.fingerprint, "title": d.title,
        "headers": d.headers, "body": d.body, "content_type": d.content_type,
        "content_encoding": d.content_encoding, "published_at": d.published_at,
        "last_failed_at": d.failed_at,
    }


LIST_COLUMNS = (
    dead_letters.c.id, dead_letters.c.service, dead_letters.c.queue, dead_letters.c.event_id,
    dead_letters.c.event_type, dead_letters.c.order_id, dead_letters.c.correlation_id,
    dead_letters.c.error_class, dead_letters.c.error_type, dead_letters.c.error_message,
    dead_letters.c.first_failed_at, dead_letters.c.last_failed_at, dead_letters.c.replay_count,
    dead_letters.c.status,
)


@dataclass(frozen=True)
class Filters:
    service: str | None = None
    error_class: str | None = None
    event_type: str | None = None
    order_id: str | None = None
    correlation_id: str | None = None
    status: str | None = None
    group: str | None = None
    failed_after: datetime | None = None
    failed_before: datetime | None = None


async def list_dead_letters(sessions: Sessions, filters: Filters,
                            limit: int = 500) -> list[dict[str, Any]]:
    query = select(*LIST_COLUMNS)
    for column, value in (
        (dead_letters.c.service, filters.service),
        (dead_letters.c.error_class, filters.error_class),
        (dead_letters.c.event_type, filters.event_type),
        (dead_letters.c.order_id, filters.order_id),
        (dead_letters.c.correlation_id, filters.correlation_id),
        (dead_letters.c.status, filters.status),
        (dead_letters.c.fingerprint, filters.group),
    ):
        if value:
            query = query.where(column == value)
    if filters.failed_after:
        query = query.where(dead_letters.c.last_failed_at >= filters.failed_after)
    if filters.failed_before:
        query = query.where(dead_letters.c.last_failed_at < filters.failed_before)
    query = query.order_by(dead_letters.c.last_failed_at.desc(), dead_letters.c.id.desc())
    async with sessions() as session:
        rows = await session.execute(query.limit(limit))
        return [dict(r._mapping) for r in rows]


async def get_dead_letter(sessions: Sessions, dead_letter_id: int) -> dict[str, Any] | None:
    async with sessions() as session:
        row = (await session.execute(
            select(dead_letters).where(dead_letters.c.id == dead_letter_id))).first()
        return dict(row._mapping) if row else None


async def groups(sessions: Sessions, include_archived: bool = False) -> list[dict[str, Any]]:
    """One row per fingerprint over the dead letters not archived: counts by status, first
    and last failure, last replay. Its status: `parked` while any is parked, `replaying`
    while any is on its way, else `replayed`."""
    c = dead_letters.c
    count_of = {s: func.sum(case((c.status == s, 1), else_=0)) for s in STATUSES}
    query = (
        select(c.fingerprint.label("id"), func.min(c.service).label("service"),
               func.min(c.error_class).label("error_class"),
               func.min(c.error_type).label("error_type"),
               func.min(c.event_type).label("event_type"), func.min(c.title).label("title"),
               func.count().label("count"),
               func.min(c.first_failed_at).label("first_failed_at"),
               func.max(c.last_failed_at).label("last_failed_at"),
               func.max(c.last_replayed_at).label("last_replayed_at"),
               *(n.label(s) for s, n in count_of.items()))
        .group_by(c.fingerprint)
        .order_by(func.max(c.last_failed_at).desc())
    )
    if not include_archived:
        query = query.where(c.status != ARCHIVED)
    async with sessions() as session:
        rows = [dict(r._mapping) for r in await session.execute(query)]
    for row in rows:
        row["status"] = (PARKED if row[PARKED] else REPLAYING if row[REPLAYING]
                         else REPLAYED if row[REPLAYED] else ARCHIVED)
        row["counts"] = {s: int(row.pop(s) or 0) for s in STATUSES}
    return rows


async def group(sessions: Sessions, fingerprint: str) -> dict[str, Any] | None:
    for row in await groups(sessions, include_archived=True):
        if row["id"] == fingerprint:
            return row
    return None


async def ids_in_group(sessions: Sessions, fingerprint: str,
                       statuses: Iterable[str]) -> list[int]:
    async with sessions() as session:
        rows = await session.execute(
            select(dead_letters.c.id)
            .where(dead_letters.c.fingerprint == fingerprint,
                   dead_letters.c.status.in_(tuple(statuses)))
            .order_by(dead_letters.c.last_failed_at, dead_letters.c.id))
        return [r.id for r in rows]


async def claim_for_replay(session: AsyncSession, ids: Sequence[int]) -> list[int]:
    """Mark the replayable ones among `ids` as replaying (in the caller's transaction);
    returns those, in order. One already on its way or archived is left alone."""
    if not ids:
        return []
    rows = await session.execute(
        select(dead_letters.c.id).where(dead_letters.c.id.in_(ids),
                                        dead_letters.c.status.in_(REPLAYABLE)))
    claimed = sorted(r.id for r in rows)
    if claimed:
        await session.execute(update(dead_letters).where(dead_letters.c.id.in_(claimed))
                              .values(status=REPLAYING))
    return claimed


async def load(sessions: Sessions, ids: Sequence[int]) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = await session.execute(
            select(dead_letters).where(dead_letters.c.id.in_(ids)).order_by(dead_letters.c.id))
        return [dict(r._mapping) for r in rows]


async def mark_replayed(session: AsyncSession, ids: Sequence[int], at: datetime) -> None:
    """Count a confirmed replay. Only a row still `replaying` becomes `replayed`: one that
    failed again meanwhile (the ingest parked it anew) stays parked."""
    if ids:
        await session.execute(
            update(dead_letters).where(dead_letters.c.id.in_(ids)).values(
                replay_count=dead_letters.c.replay_count + 1, last_replayed_at=at,
                status=case((dead_letters.c.status == REPLAYING, REPLAYED),
                            else_=dead_letters.c.status)))


async def release(sessions: Sessions, ids: Sequence[int]) -> None:
    """Dead letters a replay did not send (stopped, failed) are parked again."""
    if ids:
        async with sessions() as session, session.begin():
            await session.execute(
                update(dead_letters)
                .where(dead_letters.c.id.in_(ids), dead_letters.c.status == REPLAYING)
                .values(status=PARKED))


async def archive(session: AsyncSession, ids: Sequence[int]) -> int:
    """Archive the ones not on their way; returns how many."""
    if not ids:
        return 0
    result = await session.execute(
        update(dead_letters)
        .where(dead_letters.c.id.in_(ids), dead_letters.c.status != REPLAYING)
        .values(status=ARCHIVED))
    return int(cast("CursorResult[Any]", result).rowcount or 0)


async def replace_body(session: AsyncSession, dead_letter_id: int, body: bytes) -> None:
    await session.execute(update(dead_letters).where(dead_letters.c.id == dead_letter_id)
                          .values(body=body))


async def recover(sessions: Sessions) -> int:
    """At start: replays the last process did not finish. Their dead letters are parked
    again (a publish before the crash may have gone out: replaying again is a no-op by the
    inbox), their jobs marked `interrupted`."""
    async with sessions() as session, session.begin():
        await session.execute(update(replays).where(replays.c.status == "running")
                              .values(status="interrupted", ended_at=utcnow()))
        result = await session.execute(update(dead_letters)
                                       .where(dead_letters.c.status == REPLAYING)
                                       .values(status=PARKED))
        return int(cast("CursorResult[Any]", result).rowcount or 0)


async def forget_older_than(sessions: Sessions, retention: timedelta) -> int:
    """Retention: replayed and archived dead letters whose last failure is older than
    `retention` are deleted; parked ones stay until someone acts on them."""
    cutoff = utcnow() - retention
    return await delete_in_batches(
        sessions, dead_letters.c.id,
        (dead_letters.c.last_failed_at < cutoff)
        & or_(dead_letters.c.status == REPLAYED, dead_letters.c.status == ARCHIVED))


async def parked_counts(sessions: Sessions) -> list[tuple[str, str, int]]:
    """(service, error class, parked dead letters), for the metrics and the overview."""
    async with sessions() as session:
        rows = await session.execute(
            select(dead_letters.c.service, dead_letters.c.error_class, func.count())
            .where(dead_letters.c.status == PARKED)
            .group_by(dead_letters.c.service, dead_letters.c.error_class))
        return [(r[0], r[1], int(r[2])) for r in rows]


async def record(session: AsyncSession, user: str, action: str, target: str,
                 detail: str = "") -> None:
    """An audit record, in the caller's transaction (the action and its record commit
    together)."""
    await session.execute(insert(audit).values(at=utcnow(), user=user, action=action,
                                               target=target, detail=detail))


async def audit_trail(sessions: Sessions, limit: int = 500) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = await session.execute(
            select(audit.c.at, audit.c.user, audit.c.action, audit.c.target, audit.c.detail)
            .order_by(audit.c.id.desc()).limit(limit))
        return [dict(r._mapping) for r in rows]


async def start_replay_job(session: AsyncSession, target: str, user: str, rate: float,
                           batch: int, total: int) -> int:
    result = await session.execute(insert(replays).values(
        target=target, user=user, rate_per_second=rate, batch=batch, total=total, done=0,
        status="running", started_at=utcnow()))
    key = cast("CursorResult[Any]", result).inserted_primary_key
    assert key is not None  # one row inserted
    return int(key[0])


async def update_replay_job(sessions: Sessions, job_id: int, *, done: int | None = None,
                            status: str | None = None, error: str | None = None) -> None:
    values: dict[str, Any] = {}
    if done is not None:
        values["done"] = done
    if status is not None:
        values.update(status=status, ended_at=utcnow())
    if error is not None:
        values["error"] = error
    async with sessions() as session, session.begin():
        await session.execute(update(replays).where(replays.c.id == job_id).values(**values))


async def get_replay_job(sessions: Sessions, job_id: int) -> dict[str, Any] | None:
    async with sessions() as session:
        row = (await session.execute(select(replays).where(replays.c.id == job_id))).first()
        return dict(row._mapping) if row else None


async def replay_jobs(sessions: Sessions, limit: int = 50) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = await session.execute(select(replays).order_by(replays.c.id.desc()).limit(limit))
        return [dict(r._mapping) for r in rows]


async def ids_in_group_in(session: AsyncSession, fingerprint: str) -> list[int]:
    """The ids of a group's dead letters not archived, in the caller's transaction."""
    rows = await session.execute(
        select(dead_letters.c.id).where(dead_letters.c.fingerprint == fingerprint,
                                        dead_letters.c.status != ARCHIVED))
    return [r.id for r in rows]
