"""One async SQLAlchemy engine per service: SQLite (embedded file) or PostgreSQL.

A transaction on the hot path opens with `begin(engine)`: on PostgreSQL (and an in-memory
SQLite) the engine's own `begin()`; on a SQLite file, a synchronous SQLAlchemy connection
run inline on the event loop (`InlineTransactions`, with its reason and measured gain).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

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
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult
    from sqlalchemy.sql.base import Executable

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
    queue for it in asyncio instead of failing with "database is locked" in a thread. A
    SQLite file also gets its `InlineTransactions` (see `begin`), which share one lock with
    that connection.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_size=10, max_overflow=5, pool_pre_ping=True)

    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    database = url.database or ":memory:"
    writer = asyncio.Lock()

    async def connect_inline() -> InlineSqlite:
        return InlineSqlite(partial(sqlite3.connect, database, check_same_thread=False), writer)

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
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    # Only InlineSqlite takes the writer lock: with stock aiosqlite there is no inline path.
    if inline and database != ":memory:":
        _inline[engine] = InlineTransactions(database, writer)
    return engine


async def dispose(engine: AsyncEngine) -> None:
    """Close `engine`'s connections, its inline one included."""
    inline = _inline.pop(engine, None)
    if inline is not None:
        inline.close()
    await engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit survives a process crash; only an OS crash may lose the last one.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Statements(Protocol):
    """What a transaction's work runs its statements on (`begin`): an AsyncConnection, or
    the inline one of a SQLite file. The same Core statements, the same results."""

    async def execute(self, statement: Executable,
                      parameters: Any = None) -> CursorResult[Any]: ...

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any: ...


# The inline transactions of each SQLite file engine made by `create_engine`.
_inline: weakref.WeakKeyDictionary[AsyncEngine, InlineTransactions] = \
    weakref.WeakKeyDictionary()


def begin(engine: AsyncEngine) -> AbstractAsyncContextManager[Statements]:
    """One transaction on `engine`: committed when the block ends, rolled back if it raises.
    The hot paths' transactions (the inbox, a use case's unit of work, the relay's poll and
    mark) open here. Inside the block, use only its connection: the async engine's sessions
    wait for the writer lock the block holds (and give up after WRITER_TIMEOUT_SECONDS)."""
    inline = _inline.get(engine)
    return engine.begin() if inline is None else inline.begin()


async def take_writer(writer: asyncio.Lock) -> None:
    """Take the file's writer lock; a wait longer than WRITER_TIMEOUT_SECONDS raises (the
    holder is stuck, or uses the other connection inside its own transaction), as the
    single pooled connection's checkout timed out before."""
    if not writer.locked():
        await writer.acquire()  # free: taken at once, without a loop turn
        return
    async with asyncio.timeout(WRITER_TIMEOUT_SECONDS):
        await writer.acquire()


# Longer than any transaction takes; as long as the pool waited for its one connection.
WRITER_TIMEOUT_SECONDS = 60.0


class InlineTransactions:
    """Why: a transaction on the async engine costs about twice its statements. Each
    `await conn.execute` is a greenlet, the adapter's calls and a result; `engine.begin()`
    and its end four greenlets more, a pool checkout and a return. On a SQLite file the
    statements are local calls of microseconds, so here they run on SQLAlchemy's synchronous
    engine over the `sqlite3` driver, right on the event loop, with no greenlet. Same Core
    statements, same transaction; measured for a consumer's transaction of one event (four
    statements, docs/performance.md): 640 -> 320 us of CPU.

    SQLite allows one writer. This connection and the async engine's one (`InlineSqlite`,
    which the API's reads and the upkeep use) share `writer`, an asyncio lock, so neither
    ever meets the other's write lock (a busy wait there would block the event loop). A
    transaction here holds it from before its first statement to its end, even while its
    work awaits; the async engine's connection from its first write to its commit (a read
    outside a transaction gives it back at once). A session that reads, then later writes,
    may see an inline transaction commit in between, as a second connection would.

    The connection is kept from one transaction to the next (the lock is its only user): no
    pool checkout and return per transaction (15 -> 3 us of an empty one). So SQLAlchemy's
    statement logging (`echo`) is decided once, when it is made. After a transaction that
    raised, the next gets a new `Connection` (the pool resets the sqlite3 one)."""

    def __init__(self, database: str, writer: asyncio.Lock):
        self.writer = writer
        # pool_timeout 0: the lock serialises its users, so a wait here would be a bug, and
        # it would block the event loop.
        self.engine: Engine = create_sync_engine(
            URL.create("sqlite", database=database), pool_size=1, max_overflow=0,
            pool_timeout=0, connect_args={"check_same_thread": False})
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self._connection: Connection | None = None

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Statements]:
        await take_writer(self.writer)
        try:
            if self._connection is None:
                self._connection = self.engine.connect()
            try:
                with self._connection.begin():
                    yield InlineConnection(self._connection)
            except BaseException:
                connection, self._connection = self._connection, None
                connection.close()
                raise
        finally:
            self.writer.release()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self.engine.dispose()


class InlineConnection:
    """`Statements` on a synchronous connection: each call runs the statement at once."""

    __slots__ = ("sync_connection",)

    def __init__(self, sync_connection: Connection):
        self.sync_connection = sync_connection

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        return self.sync_connection.execute(statement, parameters)

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any:
        return self.sync_connection.scalar(statement, parameters)


def sync_engines(engine: AsyncEngine) -> list[Engine]:
    """Every synchronous engine the statements of `engine` run on: its own and, on a SQLite
    file, the inline one of `begin` (to trace them, to listen to their events)."""
    inline = _inline.get(engine)
    return [engine.sync_engine] + ([inline.engine] if inline is not None else [])


# sqlite3 calls that only make or drop a cursor object (`Connection.cursor`, `Cursor.close`).
_NO_SQLITE_WORK = frozenset({"cursor", "close"})
# Ending a transaction: no SQLite work when none is open (the pool's rollback on return).
_ENDS_TRANSACTION = frozenset({"commit", "rollback"})
# The calls that may begin a transaction, so take the writer lock first.
_STATEMENTS = frozenset({"execute", "executemany", "executescript"})


class InlineSqlite(aiosqlite.Connection):
    """aiosqlite without its worker thread: each SQLite call runs on the event loop.

    aiosqlite hands every call (cursor, execute, fetch, close, commit) to a thread and back,
    four or more GIL hand-offs per statement; profiling showed them to be most of a consumer's
    time. A statement on a local WAL file takes microseconds, and with the single pooled
    connection every other database user waits for that connection anyway, so running it
    inline costs the loop nothing it could have used (the file's inline transactions wait for
    the same writer lock); the same statements and transactions run, so no guarantee
    changes. Each call still yields to the loop once first, as the thread hand-off did:
    other tasks get their turn between statements and a cancellation lands where it always
    did. (A `busy_timeout` wait would block the loop, but only this
    process writes its file, and its two connections take turns: `writer`.) Making and
    dropping a cursor does no SQLite work, so those two calls do not yield: a statement
    still gives the loop a turn at its execute, and costs one loop iteration fewer per call
    it skips (they were 8 of a consumed event's 15); nor does a commit or rollback with no
    transaction open (`_yields_for`).

    `writer` is the file's one writer lock, shared with its `InlineTransactions`: taken
    before a statement, kept while the statement leaves a transaction open, given back when
    it ends (a read outside a transaction gives it back at once).
    """

    def __init__(self, connector: Callable[[], sqlite3.Connection],
                 writer: asyncio.Lock | None = None):
        super().__init__(connector, iter_chunk_size=64)
        self._connection = connector()
        self._writer = writer if writer is not None else asyncio.Lock()
        self._holds_writer = False

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._connection is None:
            raise ValueError("Connection closed")
        name = getattr(fn, "__name__", None)
        if self._yields_for(name):
            await asyncio.sleep(0)  # a suspension point, like the thread hand-off it replaces
        if name in _STATEMENTS and not self._holds_writer:
            await take_writer(self._writer)
            self._holds_writer = True
        try:
            return fn(*args, **kwargs)
        finally:
            if self._holds_writer and not self._in_transaction():
                self._release_writer()

    def _in_transaction(self) -> bool:
        return self._connection is not None and self._connection.in_transaction

    def _release_writer(self) -> None:
        self._holds_writer = False
        self._writer.release()

    def _yields_for(self, name: str | None) -> bool:
        """Whether a call gives the loop a turn first: one that does SQLite work. A commit or
        rollback with no transaction open does nothing in SQLite: that is the pool's
        rollback on returning a connection whose transaction committed, once per
        transaction, and it owes no turn."""
        if name in _NO_SQLITE_WORK:
            return False
        if name in _ENDS_TRANSACTION:
            return self._in_transaction()
        return True

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._holds_writer:
            self._release_writer()

    async def close(self) -> None:
        self.stop()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def engine_of(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine `sessions` are bound to: a hot path's transaction opens on it (`begin`),
    with no ORM session made around statements that load no ORM object."""
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
