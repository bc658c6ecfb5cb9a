"""Contract tests for the places that lean on other libraries' internals.

They fail loudly on any release those places were not written for. The code itself falls
back to a supported path on such a release and keeps working, only slower (SQLite) or with
less tracing (a second engine). These tests make sure nobody ships that by accident.
"""

from __future__ import annotations

import asyncio
import inspect
import threading

import aiosqlite
import pytest
import uvicorn
from sqlalchemy import text
from uvicorn.protocols.http import h11_impl

from messaging.chassis import db, server
from messaging.observability import telemetry

pytestmark = pytest.mark.unit

REREAD = ("re-read its source, check what messaging.{where} relies on (named in the test), "
          "then add the release to {constant}")


def test_aiosqlite_is_a_release_the_inline_connection_was_written_for():
    assert db.inline_sqlite_supported(), (
        f"aiosqlite {aiosqlite.__version__} is installed; messaging.chassis.db.InlineSqlite was "
        f"written for {db.INLINE_SQLITE_WRITTEN_FOR}: "
        + REREAD.format(where="db.InlineSqlite", constant="INLINE_SQLITE_WRITTEN_FOR"))


def test_the_aiosqlite_internals_the_inline_connection_overrides_are_there():
    # InlineSqlite replaces `_execute` (every call goes through it), sets `_connection`
    # itself and clears `_running` in `stop` instead of starting the worker thread.
    execute = aiosqlite.Connection._execute
    assert inspect.iscoroutinefunction(execute)
    assert list(inspect.signature(execute).parameters) == ["self", "fn", "args", "kwargs"]
    stock = aiosqlite.Connection(lambda: None, iter_chunk_size=64)
    assert stock._running is True and stock._connection is None
    assert callable(aiosqlite.Connection.stop)


async def test_the_inline_connection_runs_statements_on_the_event_loop_without_a_thread(
    tmp_path,
):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/inline.db")
    threads_before = threading.active_count()
    ran_in: list[int] = []
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert isinstance(raw.driver_connection, db.InlineSqlite)
            await raw.driver_connection.create_function(
                "where_am_i", 0, lambda: ran_in.append(threading.get_ident()) or 1)
            assert (await conn.execute(text("SELECT where_am_i()"))).scalar() == 1
        assert ran_in == [threading.get_ident()]  # the loop's thread, not a worker
        assert threading.active_count() == threads_before
    finally:
        await engine.dispose()


async def test_the_inline_connection_yields_to_the_loop_at_each_statement_not_for_cursors(
    tmp_path, monkeypatch,
):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/turns.db")
    turns: list[str] = []
    real_sleep = asyncio.sleep

    async def noted_sleep(delay, *args):
        turns.append("turn")
        return await real_sleep(delay, *args)

    try:
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            monkeypatch.setattr(db.asyncio, "sleep", noted_sleep)
            cursor = await raw.cursor()
            assert turns == []  # making a cursor: no SQLite work, no turn owed
            await cursor.execute("SELECT 1")
            assert turns == ["turn"]  # the statement: other tasks get their turn
            assert await cursor.fetchall() == [(1,)]
            await cursor.close()
            assert turns == ["turn", "turn"]  # the fetch yields; dropping the cursor does not
            monkeypatch.undo()
    finally:
        await engine.dispose()


async def test_the_inline_connection_ends_a_transaction_with_a_turn_but_owes_none_when_none_is_open(
    tmp_path, monkeypatch,
):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/turns.db")
    turns: list[str] = []
    real_sleep = asyncio.sleep

    async def noted_sleep(delay, *args):
        turns.append("turn")
        return await real_sleep(delay, *args)

    try:
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            await raw.execute("CREATE TABLE t (x INTEGER)")
            monkeypatch.setattr(db.asyncio, "sleep", noted_sleep)
            await raw.rollback()  # nothing open (the pool's reset after a commit)
            await raw.commit()
            assert turns == []
            await raw.execute("INSERT INTO t VALUES (1)")  # opens a transaction
            await raw.commit()
            assert turns == ["turn", "turn"]  # the statement and the commit that ends it
            monkeypatch.undo()
            assert await (await raw.execute("SELECT count(*) FROM t")).fetchall() == [(1,)]
    finally:
        await engine.dispose()


async def test_on_a_release_it_was_not_written_for_the_engine_falls_back_to_stock_aiosqlite(
    tmp_path, monkeypatch, caplog,
):
    monkeypatch.setattr(aiosqlite, "__version__", "0.99.0")
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/stock.db")
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert not isinstance(raw.driver_connection, db.InlineSqlite)
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    assert "using stock aiosqlite" in caplog.text


def test_the_sqlalchemy_instrumentation_is_a_release_the_engine_tracer_was_written_for():
    from opentelemetry.instrumentation.sqlalchemy.version import __version__

    assert str(__version__).startswith(telemetry.ENGINE_TRACER_WRITTEN_FOR), (
        f"opentelemetry-instrumentation-sqlalchemy {__version__} is installed; "
        f"messaging.observability.telemetry.instrument_engine was written for "
        f"{telemetry.ENGINE_TRACER_WRITTEN_FOR}: "
        + REREAD.format(where="telemetry.instrument_engine",
                        constant="ENGINE_TRACER_WRITTEN_FOR"))


def test_the_engine_tracer_takes_what_instrument_engine_passes():
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    parameters = list(inspect.signature(EngineTracer.__init__).parameters)
    assert parameters[:4] == ["self", "tracer", "engine", "connections_usage"]


async def test_on_a_release_it_was_not_written_for_a_second_engine_is_left_untraced(
    tmp_path, monkeypatch, caplog,
):
    import opentelemetry.instrumentation.sqlalchemy.version as version
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    was_on = instrumentor.is_instrumented_by_opentelemetry
    first = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/first.db")
    second = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/second.db")
    try:
        telemetry.instrument_engine(first)  # the instrumentor's own engine (if not yet on)
        assert instrumentor.is_instrumented_by_opentelemetry
        monkeypatch.setattr(version, "__version__", "9.99b0")
        telemetry.instrument_engine(second)
        assert "not traced" in caplog.text
    finally:
        if not was_on:  # leave the process-wide switch as this test found it
            instrumentor.uninstrument()
        await asyncio.gather(first.dispose(), second.dispose())


def test_uvicorn_is_a_release_the_quiet_server_was_written_for():
    assert server.quiet_server_supported(), (
        f"uvicorn {uvicorn.__version__} is installed; messaging.chassis.server.QuietServer was "
        f"written for {server.QUIET_SERVER_WRITTEN_FOR}: "
        + REREAD.format(where="chassis.server.QuietServer", constant="QUIET_SERVER_WRITTEN_FOR"))


def test_the_uvicorn_internals_the_quiet_server_overrides_are_there():
    # QuietServer replaces `main_loop` (run once by `_serve` after start-up, its tick then
    # ends the serving), turns `should_exit` (set by `handle_exit` on a signal) into a
    # property that wakes it, and swaps `server_state` for one whose `default_headers` are
    # made when the protocol reads them: once per request, when it builds the cycle.
    main_loop = uvicorn.Server.main_loop
    assert inspect.iscoroutinefunction(main_loop)
    assert list(inspect.signature(main_loop).parameters) == ["self"]
    assert "await self.main_loop()" in inspect.getsource(uvicorn.Server._serve)
    assert "self.should_exit = True" in inspect.getsource(uvicorn.Server.handle_exit)
    assert "self.server_state.default_headers = " in inspect.getsource(uvicorn.Server.on_tick)
    stock = uvicorn.Server(uvicorn.Config(app=None))
    assert stock.should_exit is False and stock.server_state.default_headers == []
    assert "default_headers=self.server_state.default_headers" in inspect.getsource(
        h11_impl.H11Protocol.handle_events)


def test_on_a_release_it_was_not_written_for_uvicorn_s_own_server_serves(monkeypatch, caplog):
    config = uvicorn.Config(app=None)
    assert type(server.quiet_server(config)) is server.QuietServer
    monkeypatch.setattr(uvicorn, "__version__", "9.99.0")
    assert type(server.quiet_server(config)) is uvicorn.Server
    assert "serving with uvicorn's own" in caplog.text
