"""The pipeline scenarios: the real services, over the real broker, measured from outside.

``PipelineStack`` starts what ``make run`` starts, on free loopback ports, in a throwaway
vhost, with throwaway databases (SQLite files in a temp dir, or PostgreSQL databases with
``--db postgres``) and an SMTP sink process. A payment counts as *fully processed* when every
consumer committed its events (the OrderPaid, and the OrderShipped shipping publishes for
it): each consumer's ``inbox`` row is written in the same transaction as its effect (points
granted, mail recorded as sent, audit row, shipment), so counting
inbox rows counts committed effects, and ``inbox.processed_at`` (set just before the commit)
is the moment the effect became durable.

Scenarios (``ctx.stack`` is the running ``PipelineStack``, shared in this order):

``saturation``         N concurrent clients POST as fast as the pipeline completes payments
                       (closed loop: they pause while more than ``max_backlog`` payments are
                       posted but not yet processed by every consumer, so they post no faster
                       than the stack processes: the rate it sustains). Rate = payments
                       processed by all per second, steady part of the window; how busy the
                       whole machine was over that part says whether it was CPU-bound. With
                       ``--profile`` (``ctx.options["profiler"]``), py-spy samples every
                       service over that steady part (``bench/profiling.py``).
``fixed_rate``         200 payments/s for 30 s, open loop (``run_at_rate``): POST latency from
                       the planned send time to the 201, and end-to-end latency from the planned
                       send time to the last of the consumers' commits.
``service_resources``  CPU seconds and peak RSS of each service process over the whole stack
                       run (warm-up, saturation, fixed rate), and CPU per payment.
``slow_mail``          its own stack: a client POSTs one payment at a time (at most 20/s) with
                       a normal SMTP server, then one that holds each mail 200 ms; then the
                       same against the synchronous mode (``python -m inprocess``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.harness import (
    ProcessMonitor,
    find_broker_pid,
    rate_series,
    run_at_rate,
    steady_rate,
    throwaway_vhost,
)
from messaging import spec

REPO = Path(__file__).resolve().parent.parent
# From the specs (messaging/spec.py).
SERVICES = spec.names()
CONSUMERS = tuple(s.name for s in spec.consumers())


def _events_per_payment() -> dict[str, int]:
    """Inbox rows each consumer commits per payment: the OrderPaid and the events consumers
    publish in reaction (OrderShipped), those its bindings route to it and it handles (points
    acks OrderShipped as ignored: no row)."""
    types = ["OrderPaid", *(t for s in spec.consumers() for t in s.produces)]
    per: dict[str, int] = {}
    for service in spec.consumers():
        assert service.consumes is not None
        takes = set(service.consumes.registry(service.settings()).event_types)
        per[service.name] = sum(1 for t in types if service.consumes.receives(t) and t in takes)
    return per


EVENTS_PER_PAYMENT = _events_per_payment()

# saturation: payments posted but not yet processed, at most. Small enough that the clients
# post no faster than the stack processes (with 2,000, a 20 s window never reached that
# state: the backlog kept growing, and the rate measured how the two cores were shared
# between payment and the consumers, ±15 % from run to run), large enough for full groups.
MAX_BACKLOG = 200


def payment_body(seq: int = 0) -> dict[str, Any]:
    return {
        "order_id": str(uuid.uuid4()),
        "customer_id": f"bench-{seq % 1000:04d}",
        "email": f"bench-{seq % 1000:04d}@example.com",
        "amount": 1200 + seq % 5000,
        "currency": "JPY",
    }


def _as_epoch(value: Any) -> float:
    """``inbox.processed_at`` as epoch seconds: aware (PostgreSQL) or naive UTC text (SQLite)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


# --------------------------------------------------------------------------------------------
# load client
# --------------------------------------------------------------------------------------------


class LoadClient:
    """A minimal HTTP/1.1 keep-alive client for ``POST`` with a JSON body (loopback only).

    httpx costs the load generator far more CPU per request than the service spends on it
    (its pool re-imports an optional module per request and scans its queue), and the load
    generator shares the two cores with the system under test. This client does one thing:
    write a request on a pooled connection and read a ``Content-Length`` response.
    """

    def __init__(self, host: str, port: int, max_connections: int = 256):
        self._host, self._port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)

    @classmethod
    def for_url(cls, url: str, max_connections: int = 256) -> LoadClient:
        parsed = urlsplit(url)
        return cls(parsed.hostname or "127.0.0.1", parsed.port or 80, max_connections)

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        payload = json.dumps(body, separators=(",", ":")).encode()
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        async with self._slots:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await asyncio.open_connection(
                self._host, self._port
            )
            reader, writer = conn
            try:
                writer.write(request)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if not (reused and not exc.partial):
                        raise
                    # The server had closed this idle connection (keep-alive timeout) before
                    # our request reached it: nothing was processed; send it on a new one.
                    writer.close()
                    conn = reader, writer = await asyncio.open_connection(self._host, self._port)
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length, close = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                content = await reader.readexactly(length) if length else b""
            except BaseException:
                writer.close()
                raise
            if close:
                writer.close()
            else:
                self._idle.append(conn)
            return status, content

    async def aclose(self) -> None:
        for _reader, writer in self._idle:
            writer.close()
        self._idle.clear()


# --------------------------------------------------------------------------------------------
# completion: committed effects, read from the consumers' own databases
# --------------------------------------------------------------------------------------------


class Completion:
    """Reads the consumers' inbox tables (SQLite files or PostgreSQL databases)."""

    def __init__(self, database_urls: dict[str, str]):
        self._urls = {s: database_urls[s] for s in CONSUMERS}
        self._sqlite: dict[str, sqlite3.Connection] = {}
        self._pg: dict[str, Any] = {}

    async def open(self) -> None:
        for service, url in self._urls.items():
            if url.startswith("sqlite"):
                path = url.split(":///", 1)[1]
                # A reader next to the service's writer: WAL lets both run at once.
                self._sqlite[service] = sqlite3.connect(path, timeout=10)
            else:
                import asyncpg

                self._pg[service] = await asyncpg.connect(
                    url.replace("postgresql+asyncpg://", "postgresql://")
                )

    async def close(self) -> None:
        for conn in self._sqlite.values():
            conn.close()
        for conn in self._pg.values():
            await conn.close()

    async def _query(self, service: str, sql: str) -> list[tuple]:
        if service in self._sqlite:
            return self._sqlite[service].execute(sql).fetchall()
        return [tuple(r) for r in await self._pg[service].fetch(sql)]

    async def counts(self) -> dict[str, int]:
        """Events each consumer has committed so far."""
        return {s: (await self._query(s, "SELECT count(*) FROM inbox"))[0][0] for s in CONSUMERS}

    async def done(self) -> int:
        """Payments processed by every consumer (each applies each of its events once)."""
        counts = await self.counts()
        return min(counts[s] // EVENTS_PER_PAYMENT[s] for s in CONSUMERS)

    async def finished_at(self) -> dict[str, float]:
        """order id → epoch seconds of the last of the consumers' commits of its events."""
        last: dict[str, float] = {}
        seen: dict[str, int] = {}
        for service in CONSUMERS:
            for order_id, at in await self._query(
                service, "SELECT order_id, processed_at FROM inbox"
            ):
                t = _as_epoch(at)
                seen[order_id] = seen.get(order_id, 0) + 1
                last[order_id] = max(last.get(order_id, 0.0), t)
        every = sum(EVENTS_PER_PAYMENT.values())
        return {o: t for o, t in last.items() if seen[o] == every}

    async def wait_for(self, total: int, timeout: float) -> bool:
        """Poll (bounded) until ``total`` payments are processed by every consumer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.done() >= total:
                return True
            await asyncio.sleep(0.2)
        return await self.done() >= total


# --------------------------------------------------------------------------------------------
# processes: SMTP sink and the services
# --------------------------------------------------------------------------------------------


class SmtpSinkProcess:
    """``python -m devstack.smtp_sink`` as its own process, so its CPU is not the client's."""

    def __init__(self, directory: Path, port: int, log: Path):
        self.directory, self.port, self.log = directory, port, log
        self.process: subprocess.Popen | None = None

    def start(self, delay_seconds: float = 0.0, timeout: float = 20.0) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - kept open by the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devstack.smtp_sink", "--port", str(self.port),
             "--dir", str(self.directory), "--delay", str(delay_seconds)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:  # listening yet? (poll with a deadline)
            if self.process.poll() is not None:
                raise RuntimeError(f"smtp sink exited with {self.process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("smtp sink not listening")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, delay_seconds: float) -> None:
        self.stop()
        self.start(delay_seconds)


@dataclass
class PipelineStack:
    """The four services + SMTP sink in a throwaway vhost and throwaway databases."""

    amqp_url: str
    vhost: str
    database_urls: dict[str, str]
    tmp: Path
    smtp: SmtpSinkProcess
    stack: Any  # devstack.stack.Stack
    monitor: ProcessMonitor
    completion: Completion
    client: LoadClient | None = None
    payments_posted: int = 0  # every 201 this run has seen, warm-up included
    _sampler: threading.Thread | None = None
    _stop_sampling: threading.Event = field(default_factory=threading.Event)

    def url(self, service: str) -> str:
        return self.stack.url(service)

    @property
    def pids(self) -> dict[str, int]:
        return {s: self.stack.services[s].process.pid for s in SERVICES}

    async def post_payment(self, seq: int = 0) -> str:
        """POST one payment; returns its order id (raises unless 201)."""
        assert self.client is not None
        body = payment_body(seq)
        status, content = await self.client.post_json("/payments", body)
        if status != 201:
            raise RuntimeError(f"POST /payments -> {status}: {content[:200]!r}")
        self.payments_posted += 1
        return body["order_id"]

    def start_sampling(self, interval: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop_sampling.wait(interval):
                self.monitor.sample()

        self._sampler = threading.Thread(target=loop, name="bench-monitor", daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> None:
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(5)
        self.monitor.sample()


def _database_urls(db: str, tmp: Path, prefix: str) -> tuple[dict[str, str], list[str]]:
    """Per-service database URLs, and the PostgreSQL databases to drop afterwards."""
    if db == "postgres":
        from devstack.throwaway import create_postgres_database

        names, urls = [], {}
        for s in SERVICES:
            name, url = create_postgres_database(f"bench_{s}")
            names.append(name)
            urls[s] = url
        return urls, names
    return {s: f"sqlite+aiosqlite:///{tmp}/{prefix}-{s}.db" for s in SERVICES}, []


@contextlib.asynccontextmanager
async def pipeline_stack(
    broker: Any, db: str = "sqlite", smtp_delay: float = 0.0, warmup_payments: int = 100,
    extra_env: dict[str, str] | None = None, services_python: str | None = None,
    services_cwd: Path | None = None,
):
    """Start the stack, warm it up (``warmup_payments`` processed end to end), yield it.

    ``services_python`` runs the services (default: this interpreter), from ``services_cwd``
    (default: this repository); the SMTP sink and the load client stay on this interpreter,
    so a before/after changes only the services.
    """
    from devstack.stack import Stack, free_port

    tmp = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    with throwaway_vhost(broker, prefix="bench-stack") as vhost:
        urls, pg_names = await asyncio.to_thread(_database_urls, db, tmp, "async")
        smtp = SmtpSinkProcess(tmp / "mail", free_port(), tmp / "smtp.log")
        stack = Stack(
            rabbitmq_url=broker.amqp_url(vhost),
            database_urls=urls,
            smtp_port=smtp.port,
            ports={s: free_port() for s in SERVICES},
            log_dir=tmp,
            cwd=services_cwd or REPO,
            extra_env=dict(extra_env or {}),
            python=services_python or sys.executable,
        )
        completion = Completion(urls)
        monitor = ProcessMonitor()
        try:
            smtp.start(smtp_delay)
            stack.start()
            await asyncio.to_thread(stack.wait_ready, timeout=90)
            await completion.open()
            handle = PipelineStack(
                amqp_url=broker.amqp_url(vhost), vhost=vhost, database_urls=urls, tmp=tmp,
                smtp=smtp, stack=stack, monitor=monitor, completion=completion,
                client=LoadClient.for_url(stack.url("payment")),
            )
            for s in SERVICES:
                monitor.add(s, handle.pids[s])
            monitor.add("smtp sink", smtp.process.pid)
            broker_pid = find_broker_pid(broker.amqp_port)
            if broker_pid is not None:
                monitor.add("rabbitmq (beam.smp)", broker_pid, since_now=True)
            import os

            # without its children: the py-spy samplers of --profile are (reaped, their CPU
            # would land here), and the SMTP sink and services are measured on their own
            monitor.add("bench client", os.getpid(), since_now=True, children=False)
            handle.start_sampling()
            # warm-up: imports, connections, caches, the SQLite files' first pages
            await asyncio.gather(*(handle.post_payment(i) for i in range(warmup_payments)))
            if not await completion.wait_for(warmup_payments, timeout=120):
                raise TimeoutError("warm-up payments were not processed within 120 s")
            try:
                yield handle
            finally:
                handle.stop_sampling()
                await handle.client.aclose()
        finally:
            await completion.close()
            await asyncio.to_thread(stack.stop)
            smtp.stop()
            await asyncio.to_thread(_drop_databases, pg_names)


def _drop_databases(names: list[str]) -> None:
    if names:
        from devstack.throwaway import drop_postgres_database

        for name in names:
            drop_postgres_database(name)


def _bar(total: float, desc: str, progress: bool, unit: str = "s"):
    from tqdm import tqdm

    return tqdm(total=round(total), desc=desc, unit=unit, disable=not progress, leave=False)


# --------------------------------------------------------------------------------------------
# saturation
# --------------------------------------------------------------------------------------------


async def saturation(ctx: Any) -> dict[str, Any]:
    st: PipelineStack = ctx.stack
    clients = int(ctx.options.get("clients") or 32)
    max_backlog = int(ctx.options.get("max_backlog") or MAX_BACKLOG)
    duration = ctx.duration
    warmup = min(5.0, duration * 0.2)
    base = await st.completion.done()
    posted_base = st.payments_posted
    stop = asyncio.Event()
    done_now = base
    post_ms: list[float] = []
    errors: list[str] = []
    backlog_waits = 0

    async def client(k: int) -> None:
        nonlocal backlog_waits
        seq = k
        while not stop.is_set():
            if st.payments_posted - done_now > max_backlog:  # closed loop: keep pace
                backlog_waits += 1
                await asyncio.sleep(0.01)
                continue
            started = time.perf_counter()
            try:
                await st.post_payment(seq)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
                continue
            post_ms.append((time.perf_counter() - started) * 1000)
            seq += clients

    cpu_before = {s: st.monitor.stats[s].cpu_s for s in st.monitor.stats}
    samples: list[tuple[float, int]] = []
    posted_samples: list[tuple[float, int]] = []
    # --profile: a bench.profiling.ServiceProfiler; it samples the steady window only
    profiler = ctx.options.get("profiler")
    profiling = False
    busy_mark: tuple[float, float] | None = None  # the machine's CPU, from the steady window on
    bar = _bar(duration, "saturation", ctx.progress)
    t0 = time.monotonic()
    tasks = [asyncio.create_task(client(k)) for k in range(clients)]
    shown = 0
    try:
        while True:
            now = time.monotonic() - t0
            if busy_mark is None and now >= warmup:
                busy_mark = st.monitor.busy_mark()
            if profiler is not None and not profiling and now >= warmup:
                profiler.start(st.pids)  # the stack's processes, every service it started
                profiling = True
            done_now = await st.completion.done()
            samples.append((now, done_now - base))
            posted_samples.append((now, st.payments_posted - posted_base))
            series = rate_series(samples, window=2.0)
            bar.set_postfix_str(f"{series[-1][1]:,.0f} payments/s" if series else "")
            step = min(round(duration), int(now)) - shown
            if step > 0:
                bar.update(step)
                shown += step
            if now >= duration:
                break
            await asyncio.sleep(0.25)  # sampling period, not synchronisation
        busy_share = st.monitor.busy_share_since(busy_mark) if busy_mark is not None else None
        if profiling:
            profiler.interrupt()
        stop.set()
        await asyncio.gather(*tasks)
        window_end = time.monotonic() - t0
        bar.close()
        posted = st.payments_posted - posted_base
        drained = await st.completion.wait_for(base + posted, timeout=180)
        drained_at = time.monotonic() - t0
        samples.append((drained_at, await st.completion.done() - base))
        st.monitor.sample()
        # after the drain: writing the flame graphs does not compete with the measurement
        profile = await asyncio.to_thread(profiler.collect) if profiling else None
    except BaseException:
        if profiling:
            profiler.abandon()
        raise
    processed = samples[-1][1]
    rate = steady_rate([s for s in samples if s[0] <= window_end], skip_start=warmup)
    cpu = {s: st.monitor.stats[s].cpu_s - cpu_before[s] for s in cpu_before}
    return {
        "rate": rate,
        "unit": "payments/s processed by every consumer (POST, points, two mails, audit, shipping)",
        "post_rate": steady_rate(
            [s for s in posted_samples if s[0] <= window_end], skip_start=warmup
        ),
        "config": {"clients": clients, "max_backlog": max_backlog, "duration_s": duration,
                   "warmup_s": warmup, "db": ctx.options.get("db")},
        "posted": posted,
        "processed": processed,
        "drained": drained,
        "drained_after_s": round(drained_at, 2),
        "errors": len(errors),
        "error_samples": errors[:5],
        "backlog_waits": backlog_waits,
        # Near 1.0: CPU-bound (every core busy), so only less CPU per payment goes faster.
        "machine_busy_share": None if busy_share is None else round(busy_share, 3),
        "post_latency_closed_loop_ms": _summary(post_ms),
        "cpu_ms_per_payment": {s: round(c * 1000 / processed, 3) for s, c in cpu.items()}
        if processed else {},
        "timeseries": rate_series(samples, window=1.0),
        **({"profile": profile} if profile is not None else {}),
    }


def _summary(values: list[float]) -> dict[str, Any]:
    from bench.harness import summarize

    return summarize(values)


# --------------------------------------------------------------------------------------------
# fixed rate
# --------------------------------------------------------------------------------------------


async def fixed_rate(ctx: Any) -> dict[str, Any]:
    st: PipelineStack = ctx.stack
    rate = float(ctx.options.get("rate") or 200.0)
    duration = min(ctx.duration, 30.0)
    base = await st.completion.done()
    planned: dict[str, float] = {}  # order id → planned send time (epoch s)
    wall0 = time.time()

    async def send(i: int) -> None:
        order_id = await st.post_payment(i)
        planned[order_id] = wall0 + i / rate

    samples: list[tuple[float, int]] = []
    bar = _bar(rate * duration, f"fixed rate {rate:.0f}/s", ctx.progress, unit="payments")
    t0 = time.monotonic()
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - t0, await st.completion.done() - base))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    load = await run_at_rate(send, rate, duration, max_in_flight=1000, drain_timeout=30,
                             on_tick=lambda _i: bar.update(1))
    bar.close()
    drained = await st.completion.wait_for(base + load.ok, timeout=120)
    stop.set()
    await sampler
    samples.append((time.monotonic() - t0, await st.completion.done() - base))
    finished = await st.completion.finished_at()
    e2e_ms = [(finished[o] - t) * 1000 for o, t in planned.items() if o in finished]
    return {
        "rate": None if load.errors else steady_rate(samples, skip_start=min(3.0, duration / 5),
                                                     skip_end=0.0),
        "offered_rate": rate,
        "duration_s": duration,
        "scheduled": load.scheduled,
        "ok": load.ok,
        "errors": load.errors,
        "error_samples": load.error_samples,
        "max_start_lag_ms": round(load.max_start_lag_ms, 2),
        "drained": drained,
        "e2e_missing": len(planned) - len(e2e_ms),
        "timeseries": rate_series(samples, window=1.0),
        "latency_samples_ms": {"post": load.latencies_ms, "e2e": e2e_ms},
    }


# --------------------------------------------------------------------------------------------
# service resources
# --------------------------------------------------------------------------------------------


def service_resources(ctx: Any) -> dict[str, Any]:
    st: PipelineStack = ctx.stack
    st.monitor.sample()
    stats = st.monitor.as_dict()
    return {
        "over": "the whole stack run so far (start-up, warm-up and the scenarios before this)",
        "payments": st.payments_posted,
        "resources": stats,
        "cpu_ms_per_payment": {
            name: round(s["cpu_s"] * 1000 / st.payments_posted, 3) for name, s in stats.items()
        } if st.payments_posted else {},
        "machine_cpu": st.monitor.machine_dict(),
    }


# --------------------------------------------------------------------------------------------
# slow mail server: POST latency, asynchronous deployment vs synchronous mode
# --------------------------------------------------------------------------------------------


async def _sequential_posts(url: str, seconds: float, pace: float = 0.05) -> list[float]:
    """One payment at a time for ``seconds`` (one every ``pace`` s at most): POST latencies."""
    latencies: list[float] = []
    client = LoadClient.for_url(url, max_connections=1)
    try:
        for i in range(3):  # warm the connection and the code path
            await client.post_json("/payments", payment_body(i))
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            started = time.perf_counter()
            status, content = await client.post_json("/payments", payment_body(i))
            elapsed = time.perf_counter() - started
            if status != 201:
                raise RuntimeError(f"POST /payments -> {status}: {content[:200]!r}")
            latencies.append(elapsed * 1000)
            i += 1
            if elapsed < pace:
                await asyncio.sleep(pace - elapsed)  # pacing, not synchronisation
    finally:
        await client.aclose()
    return latencies


async def slow_mail(ctx: Any) -> dict[str, Any]:
    from devstack.stack import free_port
    from devstack.syncmode import SyncShop

    delay = float(ctx.options.get("smtp_delay") or 0.2)
    seconds = float(ctx.options.get("slow_mail_seconds") or max(3.0, min(8.0, ctx.duration / 4)))
    samples: dict[str, list[float]] = {}
    bar = _bar(4, "slow mail", ctx.progress, unit="phase")
    async with pipeline_stack(ctx.broker, ctx.options.get("db", "sqlite"),
                              warmup_payments=20,
                              services_python=ctx.options.get("services_python"),
                              services_cwd=ctx.options.get("services_cwd")) as st:
        samples["async_post_normal"] = await _sequential_posts(st.url("payment"), seconds)
        bar.update(1)
        st.smtp.restart(delay)
        samples["async_post"] = await _sequential_posts(st.url("payment"), seconds)
        bar.update(1)
        # mails still to send when the slow phase ends (each phase also posts 3 warm-ups)
        posted = st.payments_posted + sum(len(samples[k]) + 3 for k in samples)
        mails_pending = (posted * EVENTS_PER_PAYMENT["mailer"]
                         - (await st.completion.counts())["mailer"])
        tmp, smtp = st.tmp, st.smtp
        # the synchronous mode, against the same (slow) SMTP sink
        sync_urls, pg_names = await asyncio.to_thread(
            _database_urls, ctx.options.get("db", "sqlite"), tmp, "sync"
        )
        shop = SyncShop(database_urls=sync_urls, smtp_port=smtp.port,
                        ports={s: free_port() for s in SERVICES},
                        log_path=tmp / "inprocess.log",
                        python=ctx.options.get("services_python") or sys.executable)
        shop.start()
        try:
            await asyncio.to_thread(shop.wait_ready, timeout=90)
            samples["sync_post"] = await _sequential_posts(shop.url("payment"), seconds)
            bar.update(1)
            smtp.restart(0.0)
            samples["sync_post_normal"] = await _sequential_posts(shop.url("payment"), seconds)
            bar.update(1)
        finally:
            await asyncio.to_thread(shop.stop)
            await asyncio.to_thread(_drop_databases, pg_names)
    bar.close()
    return {
        "smtp_delay_s": delay,
        "seconds_per_phase": seconds,
        "method": "one client, one payment at a time, at most 20/s",
        "async_mail_backlog_after_slow_phase": mails_pending,
        "latency_samples_ms": samples,
    }
