"""POST /payments latency, synchronous vs asynchronous mode, with a slow mail server.

    .venv/bin/python apps/inprocess/scripts/post_latency.py [--payments 40] [--smtp-delay 0.2]

Starts an SMTP sink that holds every mail for `--smtp-delay` seconds, then each mode in turn
on free ports with throwaway SQLite files (the asynchronous one in a throwaway vhost of the
local RabbitMQ), sends the same number of sequential payments to each, and prints a
Markdown table: how long the customer waits for `201`, and how long until the thank-you
mail is recorded as sent. A rough figure for docs/sync-then-async.md, not a benchmark: the
bench/ suite measures the slow-mail scenario properly.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

from devstack import smtp_sink, throwaway
from devstack.stack import SERVICES, Stack, free_port
from devstack.syncmode import SyncShop
from devstack.wait import eventually


def run_payments(
    urls: dict[str, str], count: int, pace: float
) -> tuple[list[float], list[float]]:
    """Sequential payments, one every `pace` seconds at most: the POST latencies, then each
    payment's time until its mail was recorded as sent."""
    client = httpx.Client(timeout=30)
    for _ in range(3):  # warm up connections and code paths
        client.post(f"{urls['payment']}/payments", json=body())
    post_ms, started_at = [], {}
    for _ in range(count):
        if started_at:
            time.sleep(max(0.0, pace - (time.time() - max(started_at.values()))))
        payload = body()
        start_wall, start = time.time(), time.perf_counter()
        response = client.post(f"{urls['payment']}/payments", json=payload)
        post_ms.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
        started_at[payload["order_id"]] = start_wall
    mail_ms = []
    for order_id, start_wall in started_at.items():
        [mail] = eventually(
            lambda o=order_id: client.get(f"{urls['mailer']}/mails",
                                          params={"order_id": o}).json(),
            timeout=120, message=f"mail of {order_id}")
        sent = datetime.fromisoformat(mail["sent_at"].replace("Z", "+00:00")).timestamp()
        mail_ms.append((sent - start_wall) * 1000)
    return post_ms, mail_ms


def body() -> dict:
    return {"order_id": str(uuid.uuid4()), "customer_id": "bench", "amount": 1250,
            "email": "bench@example.com", "currency": "JPY"}


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.0f} / {p95:.0f} / {ordered[-1]:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=40)
    parser.add_argument("--smtp-delay", type=float, default=0.2)
    parser.add_argument("--pace", type=float, default=0.0,
                        help="seconds from one payment's start to the next (0: back to back)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="post-latency-"))
    smtp_port = free_port()
    controller, _ = smtp_sink.start(tmp / "mail", port=smtp_port, delay_seconds=args.smtp_delay)
    rows = []
    try:
        sync = SyncShop(
            database_urls={s: f"sqlite+aiosqlite:///{tmp}/sync-{s}.db" for s in SERVICES},
            smtp_port=smtp_port, ports={s: free_port() for s in SERVICES},
            log_path=tmp / "inprocess.log", extra_env={"LOG_LEVEL": "WARNING"},
        )
        sync.start()
        try:
            sync.wait_ready(timeout=60)
            rows.append(("sync", *run_payments({s: sync.url(s) for s in SERVICES},
                                               args.payments, args.pace)))
        finally:
            sync.stop()

        with throwaway.throwaway_vhost("latency") as (_name, amqp_url):
            stack = Stack(
                rabbitmq_url=amqp_url,
                database_urls={s: f"sqlite+aiosqlite:///{tmp}/async-{s}.db" for s in SERVICES},
                smtp_port=smtp_port, ports={s: free_port() for s in SERVICES}, log_dir=tmp,
                extra_env={"LOG_LEVEL": "WARNING"},
            )
            stack.start()
            try:
                stack.wait_ready(timeout=60)
                rows.append(("async", *run_payments({s: stack.url(s) for s in SERVICES},
                                                    args.payments, args.pace)))
            finally:
                stack.stop()
    finally:
        controller.stop()

    print(f"\n{args.payments} sequential payments, SMTP server holding each mail "
          f"{args.smtp_delay * 1000:.0f} ms, one every {args.pace:.2f} s at most; "
          "median / p95 / max in ms\n")
    print("| mode | POST /payments → 201 | payment → mail recorded as sent |")
    print("|---|---|---|")
    for mode, post_ms, mail_ms in rows:
        print(f"| {mode} | {summary(post_ms)} | {summary(mail_ms)} |")


if __name__ == "__main__":
    main()
