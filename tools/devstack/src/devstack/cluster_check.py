"""The node-loss check (`make test-cluster`): three RabbitMQ 4 nodes behind HAProxy, two payment
instances on one PostgreSQL database behind HAProxy, the three consumers; a steady load of
payments and refunds while the node leading the work queues is SIGKILLed, later a payment
instance, later a consumer (restarted). Then count, per service, as the chaos check does
(devstack/chaos.py): lost, duplicated, unexpected; publishes per outbox row (a tap queue sees
every publish); POSTs answered 201; how long effects stalled after the node died.

    python -m devstack.cluster_check [--payments 600 --seconds 60]

Needs root (the nodes run in network namespaces: devstack/rabbit4.py); installs haproxy
and debootstrap with apt-get when missing. Figures: docs/cluster.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from devstack import chaos, rabbit4, smtp_sink, throwaway
from devstack.stack import SERVICES, Stack, free_port, wait_until_ready

TAP_QUEUE = "cluster-check.tap"
EFFECT_TABLES = {"points": "ledger", "mailer": "sent_mails", "audit": "audit_log"}


@dataclass
class Timeline:
    """Effects applied over time, per consumer: (monotonic time, rows)."""

    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def stall_after(self, service: str, moment: float, until: float) -> float:
        """Longest time without a new effect in [moment, until]: how long the fault held
        the service's effects back (0 if they never paused longer than a sample)."""
        points = [(t, n) for t, n in self.samples.get(service, []) if moment <= t <= until]
        longest, last_change, last_count = 0.0, moment, None
        for t, n in points:
            if last_count is not None and n > last_count:
                longest = max(longest, t - last_change)
                last_change = t
            last_count = n
        return longest


def _count(database_url: str, table: str) -> int:
    path = database_url.split("///", 1)[1]
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return 0


def watch_effects(stack: Stack, timeline: Timeline, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        now = time.monotonic()
        for service, table in EFFECT_TABLES.items():
            timeline.samples.setdefault(service, []).append(
                (now, _count(stack.database_urls[service], table)))


def haproxy_config(broker: rabbit4.Rabbit4, amqp_port: int, http_port: int,
                   payment_ports: list[int]) -> str:
    """TCP to the broker nodes (health-checked: a dead node is out within ~2 s and its
    sessions are cut), HTTP to the payment instances (a dead one is skipped at once)."""
    nodes = "\n".join(
        f"    server {n.hostname} {n.ip}:5672 check inter 1s fall 2 rise 2 "
        "on-marked-down shutdown-sessions" for n in broker.nodes)
    payments = "\n".join(
        f"    server payment-{i} 127.0.0.1:{port} check inter 1s fall 2 rise 2"
        for i, port in enumerate(payment_ports, 1))
    return f"""global
    maxconn 4096
defaults
    timeout connect 2s
    timeout client 3h
    timeout server 3h
    retries 3
    option redispatch
frontend amqp
    mode tcp
    bind 127.0.0.1:{amqp_port}
    default_backend rabbitmq
backend rabbitmq
    mode tcp
    balance roundrobin
{nodes}
frontend payment
    mode http
    timeout client 30s
    bind 127.0.0.1:{http_port}
    default_backend payment
backend payment
    mode http
    timeout server 30s
    balance roundrobin
    option httpchk GET /healthz
    # A POST carries an Idempotency-Key: resending it after a dead instance is safe.
    retry-on conn-failure empty-response response-timeout
{payments}
"""


@dataclass
class Result:
    chaos: chaos.Report
    publishes: Counter = field(default_factory=Counter)
    orders: dict = field(default_factory=dict)
    node_killed: str = ""
    stalls: dict[str, float] = field(default_factory=dict)
    payment_killed_at: float = 0.0  # time.monotonic()
    wall_seconds: float = 0.0

    @property
    def unpublished(self) -> int:
        return sum(1 for n in self.publishes.values() if n == 0)

    @property
    def passed(self) -> bool:
        return self.chaos.passed and self.chaos.settled and self.unpublished == 0

    def table(self) -> str:
        per_row = Counter(self.publishes.values())
        lines = [self.chaos.table(), "",
                 f"node SIGKILLed: {self.node_killed} (leader of the work queues); "
                 "a payment instance SIGKILLed; mailer SIGKILLed and restarted",
                 "publishes per outbox row: "
                 + ", ".join(f"{k}x: {v}" for k, v in sorted(per_row.items())),
                 "effects stalled after the node's death (longest pause, s): "
                 + ", ".join(f"{s} {v:.1f}" for s, v in self.stalls.items()),
                 f"POSTs: {self.chaos.payments} payments and {self.chaos.refunds} refunds "
                 f"answered, {self.chaos.http_retries} client retries",
                 f"wall time: {self.wall_seconds:.0f}s",
                 f"cluster check: {'PASS' if self.passed else 'FAIL'}"]
        return "\n".join(lines)


async def declare_tap(url: str) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(TAP_QUEUE, durable=True,
                                            arguments={"x-queue-type": "quorum"})
        await queue.bind("shop.events", "#")


async def read_tap(url: str) -> Counter:
    seen: Counter = Counter()
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=500)
        queue = await channel.get_queue(TAP_QUEUE, ensure=False)
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            seen[message.message_id] += 1
    return seen


def wait_for_replicas(broker: rabbit4.Rabbit4, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with broker.api() as api:
            queues = api.get("/api/queues/shop").json()
        if queues and all(len(q.get("members", [])) == len(broker.nodes) for q in queues):
            return
        time.sleep(1)
    raise TimeoutError("quorum queues did not grow to every node")


def work_queue_leader(broker: rabbit4.Rabbit4) -> rabbit4.Node:
    with broker.api() as api:
        leaders = Counter(api.get(f"/api/queues/shop/{q}").json()["leader"]
                          for q in chaos.WORK_QUEUES.values())
    return broker.node_by_name(leaders.most_common(1)[0][0])


def run(payments: int, seconds: float, workdir: Path, out=sys.stdout) -> Result:
    started = time.monotonic()
    rabbit4.ensure_apt_packages("haproxy")
    report = chaos.Report(config=chaos.ChaosConfig(payments=payments, seconds=seconds,
                                                   refund_ratio=0.2, concurrency=8,
                                                   connection_drops_per_consumer=0,
                                                   smtp_delay_seconds=0.0),
                          seed=random.randrange(1 << 30))
    result = Result(chaos=report)
    rng = random.Random(report.seed)
    amqp_port, http_port = free_port(), free_port()
    payment_ports = [free_port(), free_port()]
    smtp_port = free_port()
    controller, _ = smtp_sink.start(workdir / "mail", port=smtp_port)
    with rabbit4.Rabbit4(nodes_wanted=3) as broker, \
            _postgres() as payment_db:
        print("cluster: 3 nodes up; waiting for the quorum queues to reach every node",
              file=out, flush=True)
        wait_for_replicas(broker)
        (workdir / "haproxy.cfg").write_text(
            haproxy_config(broker, amqp_port, http_port, payment_ports))
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(workdir / "haproxy.cfg")],
                                   stdout=open(workdir / "haproxy.log", "wb"),  # noqa: SIM115
                                   stderr=subprocess.STDOUT)
        urls = broker.urls_via("127.0.0.1", amqp_port)
        asyncio.run(declare_tap(broker.urls["admin"]))
        stack = Stack(
            rabbitmq_url=urls["admin"], rabbitmq_urls=urls,
            database_urls={**{s: f"sqlite+aiosqlite:///{workdir}/{s}.db" for s in SERVICES},
                           "payment": payment_db},
            smtp_port=smtp_port, ports={**{s: free_port() for s in SERVICES},
                                        "payment": payment_ports[0]},
            log_dir=workdir, extra_env={"LOG_LEVEL": "INFO", "MAX_DEFERRALS": "30"},
        )
        second = _second_payment(stack, payment_ports[1], workdir)
        timeline, stop = Timeline(), threading.Event()
        try:
            stack.start()
            second.start()
            stack.wait_ready(timeout=90)
            wait_until_ready("payment-2", f"http://127.0.0.1:{payment_ports[1]}",
                             second.process, second.log, time.monotonic() + 60)
            print(f"cluster: stack up; load: {payments} payments over {seconds:.0f}s",
                  file=out, flush=True)
            watcher = threading.Thread(target=watch_effects, args=(stack, timeline, stop),
                                       daemon=True)
            watcher.start()
            node_died = _load_under_faults(stack, second, broker, result, rng, seconds,
                                           f"http://127.0.0.1:{http_port}", out)
            report.load_seconds = time.monotonic() - node_died[1]
            _settle(stack, workdir, result, out)
            stop.set()
            watcher.join()
            # Up to the next fault (the payment kill), so only the node's death is measured.
            result.stalls = {s: timeline.stall_after(s, node_died[0], result.payment_killed_at)
                             for s in EFFECT_TABLES}
            published = asyncio.run(read_tap(urls["admin"]))
            expected = chaos.expected_events(stack, result.orders)
            result.publishes = Counter({e: published.get(e, 0) for e in expected})
        finally:
            stop.set()
            stack.stop()
            second.stop()
            haproxy.terminate()
            haproxy.wait(10)
            controller.stop()
    result.wall_seconds = time.monotonic() - started
    return result


class _second_payment:  # noqa: N801 - a process, named like the stack's
    """The second payment instance: the first's settings on another port."""

    def __init__(self, stack: Stack, port: int, workdir: Path):
        self.env = {**stack.services["payment"].env, "PORT": str(port)}
        self.log = workdir / "payment-2.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "payment"], env=self.env,
                                        stdout=open(self.log, "ab"),  # noqa: SIM115
                                        stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


class _postgres:
    def __enter__(self) -> str:
        self.name, url = throwaway.create_postgres_database("cluster")
        return url

    def __exit__(self, *exc) -> None:
        throwaway.drop_postgres_database(self.name)


def _load_under_faults(stack, second, broker, result: Result, rng, seconds: float,
                       base_url: str, out) -> tuple[float, float]:
    """The load, with the three faults at 25%, 50% and 75% of its window.
    Returns (when the node died, when the load started)."""
    report = result.chaos
    started = time.monotonic()
    died = [0.0]

    def faults() -> None:
        time.sleep(max(0.0, started + 0.25 * seconds - time.monotonic()))
        node = work_queue_leader(broker)
        result.node_killed = node.name
        died[0], began = time.monotonic(), time.time()
        broker.kill(node)
        report.faults.append(chaos.connection_drop(
            f"SIGKILL {node.name} at {died[0] - started:.1f}s", began, time.time()))
        print(f"cluster: SIGKILL {node.name}", file=out, flush=True)
        time.sleep(max(0.0, started + 0.5 * seconds - time.monotonic()))
        result.payment_killed_at = time.monotonic()
        stack.signal("payment", signal.SIGKILL)
        stack.wait_exit("payment")
        print("cluster: SIGKILL payment (instance 1)", file=out, flush=True)
        time.sleep(max(0.0, started + 0.75 * seconds - time.monotonic()))
        began, offset = time.time(), time.monotonic() - started
        stack.kill("mailer")
        report.kills["mailer"] += 1
        report.faults.append(chaos.mailer_kill(f"SIGKILL mailer at {offset:.1f}s",
                                               began, time.time()))
        stack.start("mailer")
        print("cluster: SIGKILL mailer (restarted)", file=out, flush=True)

    thread = threading.Thread(target=faults, daemon=True)
    thread.start()
    result.orders = asyncio.run(chaos.generate_load(base_url, report.config, rng, report))
    thread.join()
    return died[0], started


def _settle(stack: Stack, workdir: Path, result: Result, out, timeout: float = 120.0) -> None:
    report = result.chaos
    stack.wait_ready(*chaos.CONSUMERS, timeout=60)
    began = time.monotonic()
    wanted = sum(map(len, chaos.wanted_events(result.orders).values()))
    while True:
        # Read again each time: shipping's OrderShipped rows appear while it catches up.
        expected = chaos.expected_events(stack, result.orders)
        if len(expected) >= wanted and chaos._all_applied(stack, workdir / "mail", expected):
            report.settled = True
            break
        if time.monotonic() >= began + timeout:
            break
        time.sleep(1)
    report.settle_seconds = time.monotonic() - began
    print(f"cluster: settled in {report.settle_seconds:.0f}s", file=out, flush=True)
    report.counts.update(chaos.producer_counts(stack, result.orders))
    report.counts.update(chaos.consumer_counts(stack, expected))
    arrived = [str(m["Message-ID"]) for m in smtp_sink.arrivals(workdir / "mail")]
    report.mails_out_of_order = chaos.mails_out_of_causal_order(arrived, expected)
    # Mails in flight at the mailer's kill may go out again; none at the node's death.
    smtp, report.resends = chaos.smtp_counts(workdir / "mail", expected, report.faults)
    report.counts["smtp sink (Message-ID)"] = smtp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and databases here")
    args = parser.parse_args(argv)
    reason = rabbit4.unavailable_reason()
    if reason:
        print(f"make test-cluster: {reason}; not run", flush=True)
        return 1
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args.payments, args.seconds, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="cluster-") as tmp:
            result = run(args.payments, args.seconds, Path(tmp))
    print(result.table(), flush=True)
    return 0 if result.passed else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
