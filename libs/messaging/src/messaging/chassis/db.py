"""One async SQLAlchemy engine per service: SQLite (embedded file) or PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiosqlite
from sqlalchemy import (
    Column,
    ColumnElement,
    DateTime,
    Float,
    Integer,
    MetaData,
    Table,
    TypeDecorator,
    delete,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

log = logging.getLogger(__name__)

# InlineSqlite overrides private members of aiosqlite.Connection (`_execute`, `_running`,
# `_connection`), read from aiosqlite 0.22's source. On any other release it is not used:
# the engine falls back to stock aiosqlite (correct, slower), and
# libs/messaging/tests/test_private_api_contracts.py fails until someone re-reads that source.
INLINE_SQLITE_WRITTEN_FOR = ("0.22.",)


def inline_sqlite_supported() -> bool:
    return str(aiosqlite.__version__).startswith(INLINE_SQLITE_WRITTEN_FOR)


def create_engine(database_url: str) -> AsyncEngine:
    """Create the engine; for SQLite also the file's folder, WAL mode and a busy timeout.

    SQLite allows one writer at a time, so the pool holds a single connection: sessions
    queue for it in asyncio instead of failing with "database is locked" in a thread.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_size=10, max_overflow=5, pool_pre_ping=True)

    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    database = url.database or ":memory:"

    async def connect_inline() -> InlineSqlite:
        return InlineSqlite(partial(sqlite3.connect, database, check_same_thread=False))

    inline: dict[str, Any] = {"async_creator": connect_inline}
    if not inline_sqlite_supported():
        log.warning("aiosqlite %s is not a release messaging.chassis.db.InlineSqlite was "
                    "written for (%s); using stock aiosqlite (slower)", aiosqlite.__version__,
                    ", ".join(f"{v}x" for v in INLINE_SQLITE_WRITTEN_FOR))
        inline = {}
    # In memory (the test kit): SQLAlchemy keeps the one connection, and so the database.
    pool = {} if database == ":memory:" else {"pool_size": 1, "max_overflow": 0,
                                               "pool_timeout": 60}
    engine = create_async_engine(url, **pool, **inline)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a process crash; only an OS crash may lose the last one.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


# sqlite3 calls that only make or drop a cursor object (`Connection.cursor`, `Cursor.close`).
_NO_SQLITE_WORK = frozenset({"cursor", "close"})
# Ending a transaction: no SQLite work when none is open (the pool's rollback on return).
_ENDS_TRANSACTION = frozenset({"commit", "rollback"})


class InlineSqlite(aiosqlite.Connection):
    """aiosqlite without its worker thread: each SQLite call runs on the event loop.

    aiosqlite hands every call (cursor, execute, fetch, close, commit) to a thread and back,
    four or more GIL hand-offs per statement; profiling showed them to be most of a consumer's
    time. A statement on a local WAL file takes microseconds, and with the single pooled
    connection every other database user waits for that connection anyway, so running it
    inline costs the loop nothing it could have used; the same statements and transactions
    run, so no guarantee changes. Each call still yields to the loop once first, as the
    thread hand-off did: other tasks get their turn between statements and a cancellation
    lands where it always did. (A `busy_timeout` wait would block the loop, but only this
    process writes its file.) Making and dropping a cursor does no SQLite work, so those two
    calls do not yield: a statement still gives the loop a turn at its execute, and costs
    one loop iteration fewer per call it skips (they were 8 of a consumed event's 15); nor
    does a commit or rollback with no transaction open (`_yields_for`).
    """

    def __init__(self, connector: Callable[[], sqlite3.Connection]):
        super().__init__(connector, iter_chunk_size=64)
        self._connection = connector()

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._connection is None:
            raise ValueError("Connection closed")
        if self._yields_for(getattr(fn, "__name__", None)):
            await asyncio.sleep(0)  # a suspension point, like the thread hand-off it replaces
        return fn(*args, **kwargs)

    def _yields_for(self, name: str | None) -> bool:
        """Whether a call gives the loop a turn first: one that does SQLite work. A commit or
        rollback with no transaction open does nothing in SQLite: that is the pool's
        rollback on returning a connection whose transaction committed, once per
        transaction, and it owes no turn."""
        if name in _NO_SQLITE_WORK:
            return False
        if name in _ENDS_TRANSACTION:
            return self._connection is not None and self._connection.in_transaction
        return True

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.stop()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def engine_of(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine `sessions` are bound to: a hot path's transaction opens a Core connection
    on it (`engine.begin()`), with no ORM session made around statements that load no ORM
    object."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        raise TypeError("these sessions are not bound to an AsyncEngine")
    return bind


# One row, rewritten by each readiness probe: a database that answers reads but cannot
# write (a full disk, a read-only replica or file) must make the service not ready.
_probe_metadata = MetaData()
readiness_probe = Table(
    "readiness_probe", _probe_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("checked_at", Float, nullable=False),  # epoch seconds of the last probe
)
_PROBE_WRITE = text(
    "INSERT INTO readiness_probe (id, checked_at) VALUES (1, :now) "
    "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at"
)


_SCHEMA_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('mini_ec.create_schema'))")


async def create_schema(engine: AsyncEngine, *metadatas: MetaData) -> None:
    """Create missing tables, and the nullable columns and indexes a table made by an
    earlier release lacks. The schema only grows; see docs/decisions.md, "Schema"."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Instances starting together would race on CREATE TABLE (a unique violation
            # in pg_type); the lock, held to commit, lets one create and the rest see it.
            await conn.execute(_SCHEMA_LOCK)
        for metadata in (*metadatas, _probe_metadata):
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(_add_missing, metadata)


def _add_missing(conn: Connection, metadata: MetaData) -> None:
    """ALTER TABLE ... ADD COLUMN for each missing nullable column (SQLite and PostgreSQL
    both can), then CREATE INDEX for each missing index. Anything else is a migration."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"{table.name}.{column.name} is missing and NOT NULL: "
                                   "that needs a migration")
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        for index in table.indexes:
            index.create(conn, checkfirst=True)


async def check_writable(engine: AsyncEngine) -> None:
    """Readiness: one small committed write (SQLite and PostgreSQL both upsert this way).
    A `SELECT 1` passes on a full disk; this raises."""
    async with engine.begin() as conn:
        await conn.execute(_PROBE_WRITE, {"now": time.time()})


async def delete_in_batches(
    sessions: async_sessionmaker[AsyncSession], key: ColumnElement[Any],
    where: ColumnElement[bool],
    batch: int = 1000,
) -> int:
    """Delete the rows of `key`'s table that match `where`, `batch` rows per short
    transaction; returns how many. Upkeep of a big backlog must not hold the (single SQLite)
    connection, and with it the event loop, for seconds."""
    table = key.table
    removed = 0
    while True:
        async with sessions() as session, session.begin():
            chosen = select(key).where(where).limit(batch)
            result = cast("CursorResult[Any]",
                          await session.execute(delete(table).where(key.in_(chosen))))
        removed += result.rowcount or 0
        if (result.rowcount or 0) < batch:
            return removed
        await asyncio.sleep(0)  # whoever waits for the connection goes first


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp kept as aware UTC on SQLite (which forgets zones) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: store UTC-aware values only")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
