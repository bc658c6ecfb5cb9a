"""`db.begin`: a SQLite file's transactions run inline, on the synchronous engine, and take
turns with the async engine's connection through one writer lock (messaging/chassis/db.py,
`InlineTransactions`). Without the lock, one connection's write would meet the other's
write lock and wait in `busy_timeout`, blocking the event loop, then fail."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, text

from messaging.chassis import db

pytestmark = pytest.mark.integration

_CREATE = text("CREATE TABLE IF NOT EXISTS notes (n INTEGER PRIMARY KEY)")
_ADD = text("INSERT INTO notes (n) VALUES (:n)")
_ALL = text("SELECT n FROM notes ORDER BY n")


@pytest.fixture
async def engine(tmp_path):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/notes.db")
    async with engine.begin() as conn:
        await conn.execute(_CREATE)
    yield engine
    await engine.dispose()


async def notes(engine) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.execute(_ALL)).scalars())


async def turns(count: int = 20) -> None:
    """Let every other task run as far as it can (loop turns, not time)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_sqlite_file_transaction_runs_on_the_inline_engine_and_commits(engine):
    own, inline = db.sync_engines(engine)
    ran_on = []
    event.listen(inline, "before_cursor_execute", lambda *args: ran_on.append("inline"))
    event.listen(own, "before_cursor_execute", lambda *args: ran_on.append("async"))

    async with db.begin(engine) as conn:
        await conn.execute(_ADD, {"n": 1})
        assert await conn.scalar(text("SELECT count(*) FROM notes")) == 1

    assert ran_on == ["inline", "inline"]
    assert await notes(engine) == [1]


async def test_a_transaction_that_raises_is_rolled_back_and_frees_the_writer(engine):
    with pytest.raises(RuntimeError):
        async with db.begin(engine) as conn:
            await conn.execute(_ADD, {"n": 1})
            raise RuntimeError("the work failed")

    assert await notes(engine) == []
    async with engine.begin() as conn:  # the async engine's connection can write again
        await conn.execute(_ADD, {"n": 2})
    async with db.begin(engine) as conn:  # and so can the next inline transaction
        await conn.execute(_ADD, {"n": 3})
    assert await notes(engine) == [2, 3]


async def test_an_inline_transaction_waits_for_a_write_open_on_the_async_engine(engine):
    order = []

    async def inline():
        async with db.begin(engine) as conn:
            order.append("inline writes")
            await conn.execute(_ADD, {"n": 2})

    async with engine.begin() as conn:
        await conn.execute(_ADD, {"n": 1})  # this connection holds SQLite's write lock now
        waiting = asyncio.create_task(inline())
        await turns()
        assert order == []  # it waits for our commit, without blocking the loop
        order.append("async commits")
    async with asyncio.timeout(5):  # without the lock: blocked in busy_timeout, then failed
        await waiting

    assert order == ["async commits", "inline writes"]
    assert await notes(engine) == [1, 2]


async def test_the_async_engine_waits_for_an_inline_transaction_that_awaits(engine):
    order = []

    async def from_a_session():
        async with db.session_factory(engine)() as session, session.begin():
            await session.execute(_ADD, {"n": 2})
            order.append("session wrote")

    async with db.begin(engine) as conn:
        await conn.execute(_ADD, {"n": 1})
        waiting = asyncio.create_task(from_a_session())
        await turns()  # the inline transaction is open across these awaits
        assert order == []
        order.append("inline commits")
    async with asyncio.timeout(5):
        await waiting

    assert order == ["inline commits", "session wrote"]
    assert await notes(engine) == [1, 2]


async def test_reads_on_the_async_engine_give_the_writer_back_at_once(engine):
    async with engine.connect() as conn:
        assert list((await conn.execute(_ALL)).scalars()) == []
        # still checked out, outside a transaction: an inline transaction goes ahead
        async with db.begin(engine) as inline:
            await inline.execute(_ADD, {"n": 1})
    assert await notes(engine) == [1]


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///:memory:",
                                 "postgresql+asyncpg://nobody@127.0.0.1:1/none"])
async def test_elsewhere_a_transaction_is_the_async_engine_s_own(url):
    engine = db.create_engine(url)
    try:
        assert db.sync_engines(engine) == [engine.sync_engine]
    finally:
        await engine.dispose()


async def test_in_memory_the_async_engine_s_transaction_is_used():
    engine = db.create_engine("sqlite+aiosqlite:///:memory:")
    try:
        async with db.begin(engine) as conn:
            await conn.execute(_CREATE)
            await conn.execute(_ADD, {"n": 1})
        assert await notes(engine) == [1]
    finally:
        await engine.dispose()


async def test_a_transaction_cancelled_while_its_work_awaits_rolls_back_and_frees_the_writer(
    engine,
):
    inside = asyncio.Event()

    async def cut_short():
        async with db.begin(engine) as conn:
            await conn.execute(_ADD, {"n": 1})
            inside.set()
            await asyncio.Event().wait()  # its work awaits something that never comes

    task = asyncio.create_task(cut_short())
    async with asyncio.timeout(5):
        await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with asyncio.timeout(5), db.begin(engine) as conn:  # the writer is free again
        await conn.execute(_ADD, {"n": 2})
    assert await notes(engine) == [2]


async def test_the_async_engine_used_inside_a_transaction_gives_up_rather_than_hang(
    engine, monkeypatch
):
    monkeypatch.setattr(db, "WRITER_TIMEOUT_SECONDS", 0.2)
    with pytest.raises(TimeoutError):
        # A mistake: the async engine's statement waits for the lock the block holds.
        async with db.begin(engine), engine.begin() as conn:
            await conn.execute(_ADD, {"n": 1})
    assert await notes(engine) == []


async def test_the_inline_connection_is_kept_and_replaced_after_a_failure(engine):
    _, inline = db.sync_engines(engine)
    checkouts = []
    event.listen(inline, "engine_connect", lambda conn: checkouts.append(conn))

    for n in (1, 2):
        async with db.begin(engine) as conn:
            await conn.execute(_ADD, {"n": n})
    assert len(checkouts) == 1  # one connection for both
    with pytest.raises(RuntimeError):
        async with db.begin(engine) as conn:
            raise RuntimeError("the work failed")
    async with db.begin(engine) as conn:
        await conn.execute(_ADD, {"n": 3})
    assert len(checkouts) == 2  # a new one after the failure
    assert await notes(engine) == [1, 2, 3]


async def test_dispose_closes_the_inline_connection_too(tmp_path):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/notes.db")
    async with db.begin(engine) as conn:
        await conn.execute(_CREATE)
    _, inline = db.sync_engines(engine)
    await db.dispose(engine)
    assert inline.pool.checkedout() == 0
    assert db.sync_engines(engine) == [engine.sync_engine]
