"""``python -m bench.console``: the failed-message console with many dead letters.

Parks N dead letters (default 10,000) in the consuming services' DLQs of a throwaway vhost,
spread over the services and over a few dozen failures (groups), with the console not yet
running; then starts the console and measures

- ingest: dead letters stored per second, from the console's start until all N are in its
  store (the DLQs full at its start: the rate it catches up at, 500/s wanted);
- the groups page: `GET /groups` (the HTML page) and `GET /api/groups` with N dead letters
  stored, REQUESTS times each, median and 95th percentile (200 ms wanted).

It prints one JSON object. A benchmark: run it on a quiet machine (figures from a busy one
mean nothing), and the before and after of a change in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aio_pika
import httpx

from contracts import utcnow
from devstack import events, throwaway
from devstack.console import ConsoleProcess
from devstack.stack import free_port
from devstack.wait import eventually
from messaging import headers as h
from messaging import spec
from messaging.publisher import build_message, open_confirm_channel
from messaging.topology import QueueTopology, ensure_exchange

FAILURES = ("(451, '4.3.0 try again later')", "no such customer {n}", "timeout after {n} s",
            "connection reset by peer", "order {id} not found", "disk full")


async def park(url: str, count: int) -> None:
    """`count` dead letters across every consuming service's DLQ, confirmed in windows."""
    connection = await aio_pika.connect(url)
    await ensure_exchange(connection)
    channel = await connection.channel()
    topologies = [QueueTopology.for_service(s.name) for s in spec.consumers()]
    for topology in topologies:
        await topology.declare(channel)
    confirm = await open_confirm_channel(connection)
    exchanges = [await confirm.get_exchange(t.exchange) for t in topologies]
    pending = []
    for n in range(count):
        i = n % len(topologies)
        topology, service = topologies[i], spec.consumers()[i].name
        event = events.order_paid()
        failure = FAILURES[n % len(FAILURES)].format(n=n, id=event.order_id)
        message = build_message(
            event.to_json(), message_id=str(event.event_id), correlation_id=event.correlation_id,
            event_type=event.event_type, timestamp=event.occurred_at, headers={
                h.ERROR_CLASS: ("exhausted", "permanent")[n % 2], h.ERROR_SERVICE: service,
                h.ERROR_TYPE: f"Error{n % 4}", h.ERROR_MESSAGE: failure, h.ERROR_ATTEMPTS: 4,
                h.ERROR_AT: utcnow().isoformat(), h.ERROR_QUEUE: topology.name})
        pending.append(exchanges[i].publish(message, routing_key=topology.dlq))
        if len(pending) >= 500:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await connection.close()


def stored(console: ConsoleProcess) -> int:
    found = httpx.get(f"{console.url}/api/groups", auth=console.auth, timeout=30).json()
    return sum(g["count"] for g in found)


def timings(console: ConsoleProcess, path: str, requests: int) -> dict[str, float]:
    seconds = []
    with httpx.Client(auth=console.auth, timeout=30) as client:
        client.get(f"{console.url}{path}").raise_for_status()  # warm
        for _ in range(requests):
            started = time.perf_counter()
            client.get(f"{console.url}{path}").raise_for_status()
            seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {"p50_ms": round(statistics.median(seconds) * 1000, 1),
            "p95_ms": round(seconds[int(len(seconds) * 0.95) - 1] * 1000, 1)}


def run(count: int, requests: int, database_url: str | None) -> dict[str, object]:
    with throwaway.throwaway_vhost("bench-console") as (_vhost, url), \
            tempfile.TemporaryDirectory() as tmp:
        asyncio.run(park(url, count))
        console = ConsoleProcess(
            rabbitmq_url=url, port=free_port(), log_path=Path(tmp) / "console.log",
            database_url=database_url or f"sqlite+aiosqlite:///{tmp}/console.db")
        started = time.monotonic()
        console.start()
        try:
            console.wait_ready(timeout=180)
            eventually(lambda: stored(console) >= count, timeout=max(120, count / 50),
                       interval=0.2, message=f"{count} dead letters stored")
            ingest_seconds = time.monotonic() - started
            groups = httpx.get(f"{console.url}/api/groups", auth=console.auth,
                               timeout=30).json()
            return {
                "dead_letters": count, "groups": len(groups),
                "ingest_per_second": round(count / ingest_seconds, 1),
                "ingest_seconds_incl_start": round(ingest_seconds, 2),
                "groups_page": timings(console, "/groups", requests),
                "groups_api": timings(console, "/api/groups", requests),
            }
        finally:
            console.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n")[0])
    p.add_argument("--dead-letters", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=50, help="timed requests per page")
    p.add_argument("--database-url", help="the console's database (default: a SQLite file)")
    args = p.parse_args(argv)
    if args.dead_letters < 1 or args.requests < 1:
        print("bench.console: --dead-letters and --requests must be at least 1", file=sys.stderr)
        return 2
    print(json.dumps(run(args.dead_letters, args.requests, args.database_url), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
