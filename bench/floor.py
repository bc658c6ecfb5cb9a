"""The floor: what one message travelling alone costs at the least, and what each layer adds.

The ceiling (bench/ceiling.py) is the best this broker and client do under load. The floor
is the other end (issue 29: where does a lone message's CPU go?). It is a bare consumer doing,
for one message at a time, the work points does for an ``OrderPaid``: aio-pika, the JSON body,
one SQLite transaction on the ``sqlite3`` driver (inbox check, effect, inbox row), a manual
ack, and nothing else. Then the same with one layer of the services put back at a time:

    engine   the async engine (SQLAlchemy Core on InlineSqlite, ``engine.begin``): the
             services' path until 2026-12-08; a SQLite file's now runs inline (``db.begin``)
    span     the services' CONSUMER span around the work and the ack (``instrumentation.
             processing``), on the SDK's provider as ``setup_tracing`` makes it, no exporter
    log      one JSON log line per message (``messaging.chassis.logs``)
    metric   a labelled counter and histogram (``prometheus_client``)

and then all four. Each variant gets its own consumer process, queue and database. Messages
are published to it at a fixed rate (10/s unless ``--floor-rate``) for ``--duration`` seconds
(so the scenario takes six times that). The figure is the process's CPU time per message
(psutil, 10 ms ticks: ±0.07 ms at 300 messages; one run, not pairs). It measures this tree's
library only, so it cannot run against ``--baseline-tree`` or another ``--services-python``.

Run alone: ``python -m bench --only floor --duration 15``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import Broker, throwaway_vhost

LAYERS = ("engine", "span", "log", "metric")
DEFAULT_RATE = 10.0

_CHECK = "SELECT 1 FROM inbox WHERE event_id = ?"
_EFFECT = "INSERT INTO points (event_id, points) VALUES (?, 10)"
_RECORD = "INSERT INTO inbox (event_id) VALUES (?)"
_SCHEMA = ("CREATE TABLE IF NOT EXISTS inbox (event_id TEXT PRIMARY KEY)",
           "CREATE TABLE IF NOT EXISTS points (event_id TEXT PRIMARY KEY, points INTEGER)")


def variants() -> list[tuple[str, ...]]:
    """The bare consumer, each layer alone, then every layer."""
    return [(), *((layer,) for layer in LAYERS), LAYERS]


def label(layers: tuple[str, ...]) -> str:
    return "+".join(layers) if layers else "bare"


def open_database(path: Path) -> sqlite3.Connection:
    """The SQLite file as the services keep it (WAL, synchronous=NORMAL)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.commit()
    return conn


def apply(conn: sqlite3.Connection, event_id: str) -> bool:
    """Points' work for one event on the bare driver: applied once, a duplicate skipped. The
    driver's own transaction, as under the engine: begun by the first write, then committed."""
    try:
        seen = conn.execute(_CHECK, (event_id,)).fetchone() is not None
        if not seen:
            conn.execute(_EFFECT, (event_id,))
            conn.execute(_RECORD, (event_id,))
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return not seen


def _consume(url: str, queue: str, db: str, layers: tuple[str, ...], log_path: str) -> None:
    """The consumer process: runs until it is terminated."""
    with open(log_path, "ab") as log_file:  # the log lines go to a file, as the stack's do
        os.dup2(log_file.fileno(), 2)
    asyncio.run(_consumer(url, queue, Path(db), layers))


async def _consumer(url: str, queue: str, db: Path, layers: tuple[str, ...]) -> None:
    import aio_pika

    handle = await layered_handler(db, layers, queue)
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=32)
    declared = await channel.declare_queue(queue, durable=True)
    await declared.consume(handle)
    await asyncio.Future()  # until terminated


async def layered_handler(db: Path, layers: tuple[str, ...], queue: str) -> Any:
    """`handle(message)`: the transaction and the ack, with the layers asked for around them."""
    if "engine" in layers:
        from sqlalchemy import text

        from messaging.chassis.db import create_engine

        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        async with engine.begin() as conn:
            for statement in _SCHEMA:
                await conn.execute(text(statement))
        check, effect, record = (text(s.replace("?", ":id")) for s in (_CHECK, _EFFECT, _RECORD))

        async def transaction(event_id: str) -> None:
            async with engine.begin() as conn:
                if (await conn.execute(check, {"id": event_id})).first() is None:
                    await conn.execute(effect, {"id": event_id})
                    await conn.execute(record, {"id": event_id})
    else:
        bare = open_database(db)

        async def transaction(event_id: str) -> None:
            apply(bare, event_id)

    async def work(message: Any) -> None:
        await transaction(json.loads(message.body)["id"])
        await message.ack()

    if "log" in layers:
        import logging

        from messaging.chassis.logs import setup_logging

        setup_logging("floor", json_lines=True)
        log = logging.getLogger("floor")

        async def logged(message: Any, inner: Any = work) -> None:
            await inner(message)
            log.info("applied OrderPaid %s", message.message_id)

        work = logged
    if "span" in layers:
        from messaging.observability import instrumentation
        from messaging.observability.telemetry import setup_tracing

        for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            os.environ.pop(variable, None)  # no exporter, as in the bench's stack
        setup_tracing("floor")

        async def traced(message: Any, inner: Any = work) -> None:
            with instrumentation.processing(queue, message):
                await inner(message)

        work = traced
    if "metric" in layers:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        registry = CollectorRegistry()
        # the children looked up once, as the services' metrics do
        handled = Counter("floor_messages", "messages", ["queue", "outcome"],
                          registry=registry).labels(queue, "ack")
        seconds = Histogram("floor_seconds", "handling time", ["queue"],
                            registry=registry).labels(queue)

        async def measured(message: Any, inner: Any = work) -> None:
            started = time.perf_counter()
            await inner(message)
            handled.inc()
            seconds.observe(time.perf_counter() - started)

        work = measured
    return work


async def _one_variant(url: str, layers: tuple[str, ...], rate: float, count: int,
                       tmp: Path) -> dict[str, Any]:
    import aio_pika
    import psutil

    queue = f"floor-{label(layers)}-{uuid.uuid4().hex[:6]}"
    db = tmp / f"{queue}.db"
    log = tmp / f"{queue}.log"
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        process = mp.get_context("spawn").Process(
            target=_consume, args=(url, queue, str(db), layers, str(log)),
            daemon=True)
        process.start()
        try:
            # ready once the consumer's first message is applied: its imports and connection
            # are not what a lone message costs
            await _publish(channel, queue)
            await _wait_applied(db, 1, process, log)
            watched = psutil.Process(process.pid)
            before = watched.cpu_times()
            started = time.monotonic()
            for i in range(count):
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                await _publish(channel, queue)
            await _wait_applied(db, count + 1, process, log)
            after = watched.cpu_times()
        finally:
            process.terminate()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    finally:
        await connection.close()
    cpu_s = (after.user + after.system) - (before.user + before.system)
    return {"layers": list(layers), "messages": count,
            "cpu_ms_per_message": round(cpu_s * 1000 / count, 3)}


async def _publish(channel: Any, queue: str) -> None:
    import aio_pika

    event_id = str(uuid.uuid4())
    body = json.dumps({"id": event_id, "type": "OrderPaid"}).encode()
    await channel.default_exchange.publish(
        aio_pika.Message(body, message_id=event_id, correlation_id=event_id,
                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)


async def _wait_applied(db: Path, count: int, process: Any, log: Path,
                        timeout: float = 60.0) -> None:
    """Until the consumer has applied `count` messages; its log's end if it died first."""
    deadline = time.monotonic() + timeout
    while applied(db) < count:
        if not process.is_alive():
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"the floor consumer exited ({process.exitcode}):\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the floor consumer applied {applied(db)} of {count} "
                               f"messages in {timeout:.0f} s")
        await asyncio.sleep(0.05)  # polling the consumer's database, with a deadline


def applied(db: Path) -> int:
    """Events in the consumer's inbox (0 before it has made its tables)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])
        except sqlite3.OperationalError:  # the consumer has not made its tables yet
            return 0


async def run_floor(broker: Broker, rate: float, duration: float,
                    layer_sets: list[tuple[str, ...]] | None = None) -> dict[str, Any]:
    count = max(1, round(rate * duration))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp, \
            throwaway_vhost(broker, prefix="bench-floor") as vhost:
        for layers in layer_sets or variants():
            results[label(layers)] = await _one_variant(
                broker.amqp_url(vhost), layers, rate, count, Path(tmp))
    bare = results.get("bare", {}).get("cpu_ms_per_message")
    return {"offered_rate": rate, "variants": results,
            "added_ms": {name: round(r["cpu_ms_per_message"] - bare, 3)
                         for name, r in results.items() if bare is not None and name != "bare"}}


async def scenario(ctx: Any) -> dict[str, Any]:
    """Scenario entry point for ``bench.run``."""
    return await run_floor(ctx.broker, float(ctx.options.get("floor_rate") or DEFAULT_RATE),
                           ctx.duration)


def format_floor(result: dict[str, Any]) -> str:
    lines = [f"{'variant':<28}{'CPU ms/message':>16}{'added':>10}"]
    for name, r in result["variants"].items():
        added = result["added_ms"].get(name)
        lines.append(f"{name:<28}{r['cpu_ms_per_message']:>16.2f}"
                     f"{'' if added is None else f'{added:+.2f}':>10}")
    return "\n".join(lines)
