"""The chaos check: payments and refunds under load while every consumer is SIGKILLed and
restarted at random moments, has its broker connections (consuming and publishing) closed
under it, and the broker is restarted once; the mail server is slow meanwhile. Then count,
per service, what happened to every event in Jepsen's categories.

    python -m devstack.chaos                      # the full run (make chaos): 2,000 payments
    python -m devstack.chaos --payments 300 --seconds 20 --kills 1   # the short form

Loopback only: the local RabbitMQ (a throwaway vhost), SQLite files under a temporary
directory, an in-process SMTP sink. Restarting the broker uses `rabbitmqctl stop_app` /
`start_app`, which drops every connection on the node: don't run it while others test.
The connection drops close only the check's own vhost's connections (management API).

Categories, per service, over the events the producers committed (payment's outbox, and
shipping's: a consumer that publishes OrderShipped for every paid order):
  expected    events that should have an effect (every committed event of a type the
              service handles and its bindings route to it)
  lost        expected events with no effect
  duplicated  expected events with more than one effect
  unexpected  effects of events nobody committed, or with the wrong content
The mailer's effect is counted twice: the row it records, and the mail the SMTP server
received (by Message-ID). The mailer hands a mail to SMTP before it commits its record; a
SIGKILL in between sends it again with the same Message-ID. Such resends are reported per
fault, not as duplicated effects, up to what the fault can explain: the messages in flight
(the prefetch) at a mailer kill; none at a broker restart, a node's death or a closed
connection (a dropped connection never makes the mailer send again). Beyond that they
count as duplicated.
Across producers: "mails out of causal order" counts the orders whose "Your order has
shipped" reached the SMTP server before their "Thank you for your order" (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devstack import broker_faults, smtp_sink, throwaway
from devstack.stack import SERVICES, Stack, free_port
from messaging import spec
from messaging.chassis.settings import ConsumerSettings

# Every consuming service, from the specs.
CONSUMERS = tuple(s.name for s in spec.consumers())
# Messages a consumer works on at once: the most one fault can leave sent-but-unrecorded.
IN_FLIGHT = ConsumerSettings.model_fields["prefetch"].default
WORK_QUEUES = {s.name: s.consumes.queue for s in spec.consumers() if s.consumes}

# How each consumer's effect is counted: its table, a query (event_id first), and whether a
# row is the right effect of the event it names. A consumer without an entry is counted by
# its inbox, which holds one row per applied event, committed with the effect.
EFFECTS = {
    "points": ("ledger", "SELECT event_id, order_id, delta FROM ledger",
               lambda w, g: (g[0], g[1]) == (w["order_id"], w["delta"])),
    "mailer": ("sent_mails", "SELECT event_id, order_id, message_id FROM sent_mails",
               lambda w, g: g[0] == w["order_id"]),
    "audit": ("audit_log", "SELECT event_id, order_id, event_type, sequence FROM audit_log",
              lambda w, g: (g[0], g[1], g[2]) == (w["order_id"], w["type"], w["sequence"])),
}
_BY_INBOX = ("inbox", "SELECT event_id, order_id FROM inbox",
             lambda w, g: g[0] == w["order_id"])
# The services that publish, each from its own outbox (payment; shipping, a consumer).
PRODUCERS = tuple(s.name for s in spec.installed() if s.produces)


def handled_by(name: str, expected: dict[str, dict]) -> dict[str, dict]:
    """The expected events the consumer's bindings route to its queue and it has a handler
    for (points acks OrderShipped as ignored: no effect expected)."""
    service = spec.named(name)
    if service.consumes is None:
        return {}
    takes = set(service.consumes.registry(service.settings()).event_types)
    return {e: w for e, w in expected.items()
            if service.consumes.receives(w["type"]) and w["type"] in takes}


@dataclass(frozen=True)
class ChaosConfig:
    payments: int = 2000
    refund_ratio: float = 0.10
    seconds: float = 50.0  # the load is spread over this window; faults happen inside it
    kills_per_consumer: int = 3
    # Each closes both broker connections of a consumer (`<name>`, `<name>-publish`).
    connection_drops_per_consumer: int = 2
    broker_restarts: int = 1
    # The mail server holds each mail this long before its 250: a dropped connection then
    # finds mails whose end was written and whose answer has not come yet.
    smtp_delay_seconds: float = 0.3
    broker_down_seconds: float = 2.0
    concurrency: int = 16
    settle_timeout: float = 90.0
    seed: int | None = None


@dataclass
class Counts:
    expected: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0

    @property
    def ok(self) -> bool:
        return self.lost == self.duplicated == self.unexpected == 0


@dataclass(frozen=True)
class Fault:
    """A fault that may make the mailer send a mail again: its wall-clock span (time.time(),
    the clock the SMTP sink's file times use) and how many resends it can explain."""

    label: str
    started: float
    ended: float
    allowance: int


# A killed mailer may already have written a mail's DATA and final dot to the SMTP sink,
# which runs in this process and shares the GIL with the load: the sink can still be reading
# and saving that mail a little after the process is gone. Its resend (after the claim
# lease) is still this kill's, so the kill's window stays open this much longer.
SMTP_DRAIN_SECONDS = 2.0


def mailer_kill(label: str, started: float, ended: float) -> Fault:
    """A SIGKILL of the mailer: every message it had in flight may be sent again."""
    return Fault(label, started, ended + SMTP_DRAIN_SECONDS, IN_FLIGHT)


def connection_drop(label: str, started: float, ended: float) -> Fault:
    """A broker restart or a node's death: the mailer survives it and must not send again."""
    return Fault(label, started, ended, 0)


@dataclass
class Resends:
    """Mails received again (same Message-ID), per fault that explains them."""

    per_fault: dict[Fault, int] = field(default_factory=dict)
    unexplained: int = 0  # no fault between the previous copy and this one

    @property
    def total(self) -> int:
        return sum(self.per_fault.values()) + self.unexplained

    @property
    def beyond_faults(self) -> int:
        """Resends no fault can explain: these count as duplicated effects."""
        return self.unexplained + sum(max(0, n - f.allowance) for f, n in self.per_fault.items())

    def lines(self) -> list[str]:
        rows = [f"  {f.label}: {n} (may be up to {f.allowance})"
                for f, n in self.per_fault.items()]
        return rows + [f"  with no fault between the copies: {self.unexplained} (must be 0)"]


def attribute_resends(receipts: dict[str, list[float]], faults: list[Fault]) -> Resends:
    """Explain each copy after the first of a Message-ID by a fault that began before it and
    had not ended when the previous copy was sent; of several, the one with the most room
    left (a mailer kill shortly before a broker restart explains the kill's resends)."""
    resends = Resends(per_fault={f: 0 for f in faults})
    for times in receipts.values():
        times = sorted(times)
        for previous, again in zip(times, times[1:], strict=False):
            candidates = [f for f in faults if previous <= f.ended and f.started <= again]
            if not candidates:
                resends.unexplained += 1
                continue
            best = max(candidates,
                       key=lambda f: (f.allowance - resends.per_fault[f], f.started))
            resends.per_fault[best] += 1
    return resends


@dataclass
class Report:
    config: ChaosConfig
    seed: int
    counts: dict[str, Counts] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)  # those that can make mails resend
    resends: Resends = field(default_factory=Resends)
    mails_out_of_order: int = 0
    kills: Counter = field(default_factory=Counter)
    broker_restarts: int = 0
    connection_drops: int = 0
    payments: int = 0
    refunds: int = 0
    http_retries: int = 0
    load_seconds: float = 0.0
    settle_seconds: float = 0.0
    settled: bool = False
    dead_lettered: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.counts.values()) and self.mails_out_of_order == 0

    def table(self) -> str:
        lines = [
            f"chaos: {self.payments} payments, {self.refunds} refunds over "
            f"{self.load_seconds:.0f}s (seed {self.seed}); SIGKILL+restart: "
            + ", ".join(f"{s} x{self.kills[s]}" for s in CONSUMERS)
            + f"; connections closed: {self.connection_drops} (slow SMTP: "
            f"{self.config.smtp_delay_seconds}s); broker restarts: {self.broker_restarts}; "
            f"HTTP retries: {self.http_retries}",
            f"settled {'in' if self.settled else 'NOT within'} {self.settle_seconds:.0f}s after "
            f"the load; dead-lettered: {self.dead_lettered}",
            "",
            f"{'service':<22}{'expected':>10}{'lost':>8}{'duplicated':>12}{'unexpected':>12}",
        ]
        for name, c in self.counts.items():
            lines.append(f"{name:<22}{c.expected:>10}{c.lost:>8}{c.duplicated:>12}"
                         f"{c.unexpected:>12}")
        lines += [
            "",
            f"mails resent (same Message-ID): {self.resends.total}, reported apart from "
            "duplicated effects: a mail handed to SMTP whose record had not committed when "
            "the mailer was SIGKILLed goes out again with its Message-ID, at most the "
            f"{IN_FLIGHT} (prefetch) in flight; a dropped or closed connection resends none. "
            "Per fault:",
            *self.resends.lines(),
            f"mails out of causal order (an order's shipped mail before its thank-you mail): "
            f"{self.mails_out_of_order}",
            f"result: {'PASS' if self.passed else 'FAIL'} "
            "(lost, duplicated, unexpected and mails out of causal order must all be zero)",
        ]
        return "\n".join(lines)


# --- faults ------------------------------------------------------------------------------

def restart_broker(down_seconds: float) -> None:
    """Stop and start the RabbitMQ application on the local node; always start it again."""
    try:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
        time.sleep(down_seconds)  # the outage itself, not a synchronisation
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)


def fault_schedule(config: ChaosConfig, rng: random.Random) -> list[tuple[float, str]]:
    """(seconds after the load starts, what) for every fault, in time order."""
    window = config.seconds
    faults = [(rng.uniform(0.05, 0.95) * window, f"kill:{name}")
              for name in CONSUMERS for _ in range(config.kills_per_consumer)]
    faults += [(rng.uniform(0.05, 0.95) * window, f"drop:{name}")
               for name in CONSUMERS for _ in range(config.connection_drops_per_consumer)]
    faults += [(rng.uniform(0.3, 0.6) * window, "broker") for _ in range(config.broker_restarts)]
    return sorted(faults)


# The management API lists a (re)connected service only after its statistics interval, and
# a consumer SIGKILLed just before may take long to start on a busy machine: a drop waits
# this long for the connections it is to close.
DROP_WAIT_SECONDS = 60.0


def drop_connections(vhost: str, name: str) -> bool:
    """Close a consumer's two broker connections, as an admin (or a broken network) would;
    the service reconnects by itself. False if it had none to close in time."""
    try:
        for connection in (name, f"{name}-publish"):
            broker_faults.close(vhost, connection, reason="chaos: connection drop",
                                timeout=DROP_WAIT_SECONDS)
    except AssertionError:
        return False
    return True


_DROPS_LOCK = threading.Lock()  # drops run in threads of their own


def _drop(vhost: str, name: str, offset: float, report: Report) -> None:
    began = time.time()
    if drop_connections(vhost, name):
        with _DROPS_LOCK:
            report.connection_drops += 1
    # A fault whatever was closed: it explains no resend.
    report.faults.append(connection_drop(
        f"{name}'s connections closed at {offset:.1f}s", began, time.time()))


def run_faults(stack: Stack, vhost: str, schedule, started: float, report: Report,
               stop: threading.Event, config: ChaosConfig) -> None:
    drops: list[threading.Thread] = []
    try:
        _run_schedule(stack, vhost, schedule, started, report, stop, config, drops)
    finally:
        for drop in drops:
            drop.join()


def _run_schedule(stack: Stack, vhost: str, schedule, started: float, report: Report,
                  stop: threading.Event, config: ChaosConfig,
                  drops: list[threading.Thread]) -> None:
    for at, what in schedule:
        if stop.wait(max(0.0, started + at - time.monotonic())):
            return
        began, offset = time.time(), time.monotonic() - started
        if what == "broker":
            restart_broker(config.broker_down_seconds)
            report.broker_restarts += 1
            report.faults.append(connection_drop(
                f"broker restart {report.broker_restarts} at {offset:.1f}s", began, time.time()))
            continue
        kind, name = what.split(":", 1)
        if kind == "drop":
            # In a thread of its own: finding the connections to close may take seconds
            # (the management API's statistics lag), and the schedule goes on meanwhile.
            drop = threading.Thread(target=_drop, args=(vhost, name, offset, report),
                                    name=f"chaos-drop-{name}", daemon=True)
            drop.start()
            drops.append(drop)
            continue
        stack.signal(name, signal.SIGKILL)
        stack.wait_exit(name, timeout=30)
        report.kills[name] += 1
        if name == "mailer":
            report.faults.append(mailer_kill(
                f"SIGKILL mailer {report.kills[name]} at {offset:.1f}s", began, time.time()))
        stack.start(name)  # back at once; it reconnects and the broker redelivers


# --- load --------------------------------------------------------------------------------

async def _post(client: httpx.AsyncClient, path: str, report: Report, ok: tuple[int, ...],
                **kwargs) -> httpx.Response:
    """POST until it gets an answer in `ok` (retrying is safe: Idempotency-Key, 409)."""
    for attempt in range(8):
        try:
            response = await client.post(path, **kwargs)
            if response.status_code in ok:
                return response
            if response.status_code < 500:
                raise RuntimeError(f"{path}: {response.status_code} {response.text}")
        except httpx.TransportError:
            pass
        report.http_retries += 1
        await asyncio.sleep(0.2 * 2**attempt)
    raise RuntimeError(f"{path}: no answer after retries")


async def generate_load(base_url: str, config: ChaosConfig, rng: random.Random,
                        report: Report) -> dict[str, dict]:
    """Pay `payments` orders at an even rate over the window; refund about `refund_ratio`."""
    orders: dict[str, dict] = {}
    gate = asyncio.Semaphore(config.concurrency)
    interval = config.seconds / max(config.payments, 1)
    started = time.monotonic()

    async def one(i: int, client: httpx.AsyncClient) -> None:
        await asyncio.sleep(max(0.0, started + i * interval - time.monotonic()))
        customer = f"chaos-{i % 50}"
        body = {"order_id": str(uuid.uuid4()), "customer_id": customer,
                "email": f"{customer}@example.com", "amount": rng.randint(100, 50_000),
                "currency": "JPY"}
        refund = rng.random() < config.refund_ratio
        async with gate:
            paid = await _post(client, "/payments", report, (201,), json=body,
                               headers={"Idempotency-Key": body["order_id"]})
            order = {**body, "payment_id": paid.json()["payment_id"], "refunded": False}
            orders[body["order_id"]] = order
            report.payments += 1
            if refund:
                # 200 first time; 409 when a retry finds our own earlier refund done.
                await _post(client, f"/payments/{order['payment_id']}/refund", report,
                            (200, 409))
                order["refunded"] = True
                report.refunds += 1

    async with httpx.AsyncClient(base_url=base_url, timeout=15) as client:
        await asyncio.gather(*(one(i, client) for i in range(config.payments)))
    return orders


# --- counting ----------------------------------------------------------------------------

def _rows(database_url: str, sql: str) -> list[tuple]:
    if database_url.startswith("postgresql"):  # payment on PostgreSQL (make test-cluster)
        return asyncio.run(_pg_rows(database_url, sql))
    path = database_url.split("///", 1)[1]
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(sql).fetchall()


async def _pg_rows(database_url: str, sql: str) -> list[tuple]:
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


def expected_events(stack: Stack, orders: dict[str, dict]) -> dict[str, dict]:
    """event_id -> what it should do, from every producer's outbox, for orders the client saw."""
    events = {}
    for producer in PRODUCERS:
        for event_id, event_type, order_id, body in _rows(
            stack.database_urls[producer],
            "SELECT event_id, event_type, order_id, body FROM outbox",
        ):
            order = orders.get(order_id)
            if order is None:
                continue
            payload = json.loads(body)
            points = order["amount"] // 100
            events[event_id] = {
                "type": event_type, "order_id": order_id, "sequence": payload["sequence"],
                "delta": points if event_type == "OrderPaid" else -points,
            }
    return events


def wanted_events(orders: dict[str, dict]) -> dict[str, Counter]:
    """What each producer must have committed, once each: (order_id, event type) -> 1.
    payment: a payment and a refund per order the client got answers for; shipping: one
    OrderShipped per paid order."""
    wanted: dict[str, Counter] = {"payment": Counter(), "shipping": Counter()}
    for order_id, order in orders.items():
        wanted["payment"][(order_id, "OrderPaid")] = 1
        wanted["shipping"][(order_id, "OrderShipped")] = 1
        if order["refunded"]:
            wanted["payment"][(order_id, "OrderRefunded")] = 1
    return {p: w for p, w in wanted.items() if p in PRODUCERS}


def outbox_counts(wanted: Counter, rows: Counter) -> Counts:
    """Each wanted (order, type) has exactly one outbox row; any other row is unexpected."""
    return Counts(
        expected=len(wanted),
        lost=sum(1 for k in wanted if rows[k] == 0),
        duplicated=sum(1 for k in wanted if rows[k] > 1),
        unexpected=sum(n for k, n in rows.items() if k not in wanted),
    )


def producer_counts(stack: Stack, orders: dict[str, dict]) -> dict[str, Counts]:
    """Per producer: its outbox against what it must have committed."""
    counts = {}
    for producer, wanted in wanted_events(orders).items():
        rows = Counter((o, t) for o, t in _rows(stack.database_urls[producer],
                                                "SELECT order_id, event_type FROM outbox"))
        counts[f"{producer} (outbox)"] = outbox_counts(wanted, rows)
    return counts


def shipment_counts(stack: Stack, orders: dict[str, dict]) -> Counts:
    """One shipment per paid order, `return_requested` once refunded, `shipped` otherwise."""
    rows = _group(_rows(stack.database_urls["shipping"],
                        "SELECT order_id, status FROM shipments"))
    counts = Counts(expected=len(orders))
    for order_id, order in orders.items():
        got = rows.get(order_id, [])
        want = "return_requested" if order["refunded"] else "shipped"
        if not got:
            counts.lost += 1
        elif len(got) > 1:
            counts.duplicated += 1
        elif got[0][0] != want:
            counts.unexpected += 1
    counts.unexpected += sum(len(v) for k, v in rows.items() if k not in orders)
    return counts


def mails_out_of_causal_order(message_ids: list[str], expected: dict[str, dict]) -> int:
    """Orders whose first shipped mail came before their first thank-you mail (or without
    one). `message_ids`: the mails' Message-IDs in the order the SMTP server accepted them."""
    thanked: set[str] = set()
    wrong: set[str] = set()
    for mid in message_ids:
        event = expected.get(mid.strip("<>").removesuffix("@mini-ec"))
        if event is None:
            continue
        if event["type"] == "OrderPaid":
            thanked.add(event["order_id"])
        elif event["type"] == "OrderShipped" and event["order_id"] not in thanked:
            wrong.add(event["order_id"])
    return len(wrong)


def categorise(expected: dict[str, dict], effects: dict[str, list], fits) -> Counts:
    """How the effects found (by event id) compare to the events expected: each expected
    one lost, duplicated, or unexpected in content (`fits`); and effects nobody expected."""
    counts = Counts(expected=len(expected))
    for event_id, want in expected.items():
        got = effects.get(event_id, [])
        if not got:
            counts.lost += 1
        elif len(got) > 1:
            counts.duplicated += 1
        elif not fits(want, got[0]):
            counts.unexpected += 1
    counts.unexpected += sum(len(v) for k, v in effects.items() if k not in expected)
    return counts


def _group(rows: list[tuple]) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row[1:])
    return grouped


def consumer_counts(stack: Stack, expected: dict[str, dict]) -> dict[str, Counts]:
    counts = {}
    for name in CONSUMERS:
        table, sql, fits = EFFECTS.get(name, _BY_INBOX)
        effects = _group(_rows(stack.database_urls[name], sql))
        counts[f"{name} ({table})"] = categorise(handled_by(name, expected), effects, fits)
    return counts


def smtp_counts(mail_dir: Path, expected: dict[str, dict], faults: list[Fault]
                ) -> tuple[Counts, Resends]:
    """(counts, resends per fault) for the mails the SMTP server received, by Message-ID."""
    receipts: dict[str, list[float]] = {}
    for at, mail in smtp_sink.mails_received(mail_dir):
        receipts.setdefault(str(mail["Message-ID"]), []).append(at)
    wanted = {f"<{event_id}@mini-ec>" for event_id in handled_by("mailer", expected)}
    resends = attribute_resends({m: t for m, t in receipts.items() if m in wanted}, faults)
    counts = Counts(
        expected=len(wanted),
        lost=sum(1 for mid in wanted if mid not in receipts),
        duplicated=resends.beyond_faults,
        unexpected=sum(len(t) for mid, t in receipts.items() if mid not in wanted),
    )
    return counts, resends


def _all_applied(stack: Stack, mail_dir: Path, expected: dict[str, dict]) -> bool:
    urls = stack.database_urls
    for name in CONSUMERS:
        _, sql, _ = EFFECTS.get(name, _BY_INBOX)
        if not set(handled_by(name, expected)) <= {r[0] for r in _rows(urls[name], sql)}:
            return False
    got = {str(m["Message-ID"]) for m in smtp_sink.mails_in(mail_dir)}
    return {f"<{e}@mini-ec>" for e in handled_by("mailer", expected)} <= got


def _queues_empty(vhost: str) -> bool:
    return all(throwaway.queue_depth(vhost, q) == 0 for q in WORK_QUEUES.values())


# --- the run -----------------------------------------------------------------------------

def run(config: ChaosConfig, workdir: Path, out=sys.stdout) -> Report:
    seed = config.seed if config.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    report = Report(config=config, seed=seed)
    smtp_port = free_port()
    controller, _ = smtp_sink.start(workdir / "mail", port=smtp_port,
                                    delay_seconds=config.smtp_delay_seconds)
    try:
        with throwaway.throwaway_vhost("chaos") as (vhost, amqp_url):
            stack = Stack(
                rabbitmq_url=amqp_url,
                database_urls={s: f"sqlite+aiosqlite:///{workdir}/{s}.db" for s in SERVICES},
                smtp_port=smtp_port, ports={s: free_port() for s in SERVICES},
                log_dir=workdir,
                # Short retry delays: a redelivered or deferred event comes back quickly.
                extra_env={"LOG_LEVEL": "INFO", "RETRY_DELAYS": "1,2,4",
                           "MAX_DEFERRALS": "30"},
            )
            stack.start()
            try:
                stack.wait_ready(timeout=60)
                _run_under_faults(stack, vhost, config, rng, report, workdir, out)
            finally:
                stack.stop()
    finally:
        controller.stop()
    return report


def _run_under_faults(stack: Stack, vhost: str, config: ChaosConfig, rng: random.Random,
                      report: Report, workdir: Path, out) -> None:
    schedule = fault_schedule(config, rng)
    stop = threading.Event()
    started = time.monotonic()
    faults = threading.Thread(target=run_faults, name="chaos-faults", daemon=True,
                              args=(stack, vhost, schedule, started, report, stop, config))
    faults.start()
    try:
        orders = asyncio.run(generate_load(stack.url("payment"), config, rng, report))
        report.load_seconds = time.monotonic() - started
        faults.join()  # every scheduled fault happens, even if the load finished early
    finally:
        stop.set()
        faults.join()
    print(f"load done in {report.load_seconds:.0f}s; waiting for the consumers to settle",
          file=out, flush=True)

    # Every consumer running again, then wait until every expected effect is visible.
    for name in CONSUMERS:
        proc = stack.services[name].process
        if proc is None or proc.poll() is not None:
            stack.start(name)
    stack.wait_ready(timeout=60)
    settle_started = time.monotonic()
    deadline = settle_started + config.settle_timeout
    while True:
        # Read again each time: shipping's OrderShipped rows appear while it catches up.
        expected = expected_events(stack, orders)
        if (_all_applied(stack, workdir / "mail", expected) and _queues_empty(vhost)
                and sum(map(len, wanted_events(orders).values())) <= len(expected)):
            report.settled = True
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(1)
    report.settle_seconds = time.monotonic() - settle_started

    report.counts.update(producer_counts(stack, orders))
    report.counts.update(consumer_counts(stack, expected))
    if "shipping" in CONSUMERS:
        report.counts["shipping (shipments)"] = shipment_counts(stack, orders)
    arrived = [str(m["Message-ID"]) for m in smtp_sink.arrivals(workdir / "mail")]
    report.mails_out_of_order = mails_out_of_causal_order(arrived, expected)
    smtp, report.resends = smtp_counts(workdir / "mail", expected, report.faults)
    report.counts["smtp sink (Message-ID)"] = smtp
    report.dead_lettered = {name: throwaway.queue_depth(vhost, f"{q}.dlq")
                            for name, q in WORK_QUEUES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ChaosConfig()
    parser.add_argument("--payments", type=int, default=defaults.payments)
    parser.add_argument("--refund-ratio", type=float, default=defaults.refund_ratio)
    parser.add_argument("--seconds", type=float, default=defaults.seconds,
                        help="window the load (and the faults) are spread over")
    parser.add_argument("--kills", type=int, default=defaults.kills_per_consumer,
                        help="SIGKILL + restart per consumer")
    parser.add_argument("--connection-drops", type=int,
                        default=defaults.connection_drops_per_consumer,
                        help="closes of both broker connections, per consumer")
    parser.add_argument("--smtp-delay", type=float, default=defaults.smtp_delay_seconds,
                        help="seconds the mail server holds each mail before its 250")
    parser.add_argument("--broker-restarts", type=int, default=defaults.broker_restarts)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep databases, logs and mails in this directory")
    args = parser.parse_args(argv)
    config = ChaosConfig(payments=args.payments, refund_ratio=args.refund_ratio,
                         seconds=args.seconds, kills_per_consumer=args.kills,
                         connection_drops_per_consumer=args.connection_drops,
                         smtp_delay_seconds=args.smtp_delay,
                         broker_restarts=args.broker_restarts, seed=args.seed)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run(config, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            report = run(config, Path(tmp))
    print(report.table(), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
