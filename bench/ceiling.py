"""The raw ceiling: the best this broker and client do on this machine with our guarantees.

Same guarantees as the pipeline, no database, no HTTP, no service code:

* one publisher process: aio-pika, channel with ``publisher_confirms=True`` and
  ``on_return_raises=True``, persistent ~400-byte JSON envelopes (DESIGN §2 shape and
  properties), ``mandatory=True``; pipelined: up to ``window`` publishes awaiting their
  confirm at once (not one round-trip per message);
* a durable topic exchange bound to the consuming services' durable quorum queues, each on
  its service's first binding key (``points.events`` on ``order.*``, ``shipping.events`` on
  ``order.paid``, ...), with a delivery limit;
* one consumer process per queue: ``queue.consume(callback)`` (what the services use),
  per-consumer prefetch, JSON decoded, a manual ``ack`` per message;
* everything in a throwaway vhost created and deleted through the management API.

Sustained throughput = messages consumed and acked by *all* consumers per second
(the slowest consumer's count) in the steady part of the publishing window. The publisher is
closed-loop bounded: it pauses while more than ``max_backlog`` confirmed messages are not yet
consumed by the slowest consumer, so the figure is a rate the system keeps, not a burst into
a growing queue.

Run alone: ``python -m bench --only ceiling --duration 20``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.harness import (
    Broker,
    ProcessMonitor,
    find_broker_pid,
    rate_series,
    steady_rate,
    throwaway_vhost,
    wait_until,
)
from messaging import spec

EXCHANGE = "shop.events"
ROUTING_KEY = "order.paid"
QUEUES: dict[str, str] = {  # queue → binding key, from the consuming services' specs
    s.consumes.queue: s.consumes.bindings[0] for s in spec.consumers() if s.consumes
}
DELIVERY_LIMIT = 10


@dataclass(frozen=True)
class CeilingConfig:
    duration: float = 20.0  # seconds of publishing
    window: int = 256  # publishes awaiting their confirm at once
    prefetch: int = 256  # per consumer
    max_backlog: int = 5000  # confirmed but not yet consumed by the slowest consumer
    warmup: float | None = None  # seconds excluded at the start; default min(3, 20 %)
    drain_timeout: float = 60.0
    sample_interval: float = 0.25

    @property
    def warmup_s(self) -> float:
        return self.warmup if self.warmup is not None else min(3.0, self.duration * 0.2)


# --------------------------------------------------------------------------------------------
# message
# --------------------------------------------------------------------------------------------


def envelope(seq: int) -> tuple[str, bytes]:
    """An ``OrderPaid`` envelope shaped like DESIGN §2 (~400 bytes) and its event id."""
    event_id = str(uuid.uuid4())
    body = {
        "event_id": event_id,
        "event_type": "OrderPaid",
        "version": 1,
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "correlation_id": uuid.uuid4().hex,
        "order_id": str(uuid.uuid4()),
        "sequence": 1,
        "data": {
            "payment_id": str(uuid.uuid4()),
            "customer_id": f"customer-{seq % 1000:04d}",
            "email": f"customer-{seq % 1000:04d}@example.com",
            "amount": 1200 + seq % 5000,
            "currency": "JPY",
        },
    }
    return event_id, json.dumps(body, separators=(",", ":")).encode()


# --------------------------------------------------------------------------------------------
# child processes (spawned: no event loop or connection crosses a fork)
# --------------------------------------------------------------------------------------------


def _consumer_main(
    url: str, queue_name: str, prefetch: int, counter: Any, ready: Any, stop: Any, results: Any
) -> None:
    asyncio.run(_consume(url, queue_name, prefetch, counter, ready, stop, results))


async def _consume(
    url: str, queue_name: str, prefetch: int, counter: Any, ready: Any, stop: Any, results: Any
) -> None:
    import aio_pika

    latencies: list[float] = []
    errors = 0
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)  # per consumer, never global
        queue = await channel.get_queue(queue_name, ensure=True)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal errors
            try:
                json.loads(message.body)
                sent = (message.headers or {}).get("x-bench-sent-ns")
                await message.ack()
            except Exception:  # noqa: BLE001 - a bench must not die on one message
                errors += 1
                await message.nack(requeue=False)
                return
            if isinstance(sent, int):
                latencies.append((time.time_ns() - sent) / 1e6)
            counter.value += 1

        tag = await queue.consume(on_message, no_ack=False)
        ready.set()
        loop = asyncio.get_running_loop()
        while not await loop.run_in_executor(None, stop.wait, 0.5):
            pass
        await queue.cancel(tag)
    finally:
        await connection.close()
    # every sample: the runner summarises (exact percentiles) and thins them for the JSON
    results.put(
        {
            "role": queue_name,
            "consumed": counter.value,
            "errors": errors,
            "latency_samples_ms": latencies,
        }
    )


def _publisher_main(
    url: str,
    cfg: CeilingConfig,
    counters: list[Any],
    confirmed: Any,
    ready: Any,
    go: Any,
    stop_publishing: Any,
    done: Any,
    stop: Any,
    results: Any,
) -> None:
    asyncio.run(
        _publish(url, cfg, counters, confirmed, ready, go, stop_publishing, done, stop, results)
    )


async def _publish(
    url: str,
    cfg: CeilingConfig,
    counters: list[Any],
    confirmed: Any,
    ready: Any,
    go: Any,
    stop_publishing: Any,
    done: Any,
    stop: Any,
    results: Any,
) -> None:
    import aio_pika

    loop = asyncio.get_running_loop()
    window = asyncio.Semaphore(cfg.window)
    in_flight: set[asyncio.Task[None]] = set()
    published = 0
    failures: list[str] = []
    backlog_waits = 0

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=True)
        ready.set()
        await loop.run_in_executor(None, go.wait)

        async def publish_one(seq: int) -> None:
            event_id, body = envelope(seq)
            message = aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=event_id,
                correlation_id=event_id,
                type="OrderPaid",
                timestamp=time.time(),
                headers={
                    "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
                    "x-retry-attempt": 0,
                    # int ns: pamqp encodes a Python float as a 32-bit float (±2 min at epoch)
                    "x-bench-sent-ns": time.time_ns(),
                },
            )
            try:
                await exchange.publish(message, ROUTING_KEY, mandatory=True, timeout=30)
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                if len(failures) < 10:
                    failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    failures.append("")
            else:
                confirmed.value += 1
            finally:
                window.release()

        while not stop_publishing.is_set():
            # closed loop: don't run away from the slowest consumer
            if confirmed.value - min(c.value for c in counters) > cfg.max_backlog:
                backlog_waits += 1
                await asyncio.sleep(0.002)
                continue
            await window.acquire()
            task = asyncio.create_task(publish_one(published))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            published += 1
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=cfg.drain_timeout)
        done.set()  # every outstanding confirm is in
        while not await loop.run_in_executor(None, stop.wait, 0.5):
            pass
    finally:
        await connection.close()
    results.put(
        {
            "role": "publisher",
            "published": published,
            "confirmed": confirmed.value,
            "failed": len(failures),
            "failure_samples": [f for f in failures if f][:10],
            "backlog_waits": backlog_waits,
        }
    )


# --------------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------------


async def _declare(url: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        for name, key in QUEUES.items():
            queue = await channel.declare_queue(
                name,
                durable=True,
                arguments={"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT},
            )
            await queue.bind(exchange, key)
    finally:
        await connection.close()


def run_ceiling(broker: Broker, cfg: CeilingConfig, progress: bool = True) -> dict[str, Any]:
    """Measure the ceiling; returns the scenario's result dict (see ``scenario``)."""
    from tqdm import tqdm

    ctx = mp.get_context("spawn")
    with throwaway_vhost(broker, prefix="bench-ceiling") as vhost:
        url = broker.amqp_url(vhost)
        asyncio.run(_declare(url))

        stop = ctx.Event()
        stop_publishing = ctx.Event()
        publisher_done = ctx.Event()
        go = ctx.Event()
        results = ctx.Queue()
        counters = {q: ctx.RawValue("q", 0) for q in QUEUES}
        confirmed = ctx.RawValue("q", 0)
        procs: dict[str, Any] = {}
        readies: dict[str, Any] = {}
        broker_pid = find_broker_pid(broker.amqp_port)
        try:
            for q in QUEUES:
                readies[q] = ctx.Event()
                procs[q] = ctx.Process(
                    target=_consumer_main,
                    name=f"ceiling-{q}",
                    daemon=True,
                    args=(url, q, cfg.prefetch, counters[q], readies[q], stop, results),
                )
            readies["publisher"] = ctx.Event()
            procs["publisher"] = ctx.Process(
                target=_publisher_main,
                name="ceiling-publisher",
                daemon=True,
                args=(
                    url,
                    cfg,
                    list(counters.values()),
                    confirmed,
                    readies["publisher"],
                    go,
                    stop_publishing,
                    publisher_done,
                    stop,
                    results,
                ),
            )
            for p in procs.values():
                p.start()
            for name, ev in readies.items():
                if not ev.wait(30):
                    raise TimeoutError(f"ceiling {name} not ready within 30 s")
            monitor = ProcessMonitor()  # from here on: the measured run
            for name, p in procs.items():
                monitor.add(name, p.pid)
            if broker_pid is not None:
                monitor.add("rabbitmq (beam.smp)", broker_pid, since_now=True)

            samples: list[tuple[float, int, int, list[int]]] = []
            t0 = time.monotonic()
            go.set()
            bar = tqdm(
                total=round(cfg.duration),
                desc="ceiling",
                unit="s",
                disable=not progress,
                leave=False,
            )
            last_monitor = 0.0
            shown = 0
            while True:
                now = time.monotonic() - t0
                per_queue = [counters[q].value for q in QUEUES]
                samples.append((now, confirmed.value, min(per_queue), per_queue))
                if now - last_monitor >= 1.0:
                    monitor.sample()
                    last_monitor = now
                    series = rate_series([(s[0], s[2]) for s in samples], window=1.0)
                    bar.set_postfix_str(f"{series[-1][1]:,.0f} msg/s" if series else "")
                    step = min(round(cfg.duration), int(now)) - shown
                    if step > 0:
                        bar.update(step)
                        shown += step
                if now >= cfg.duration:
                    break
                time.sleep(cfg.sample_interval)  # sampling period, not synchronisation
            stop_publishing.set()
            publish_end = time.monotonic() - t0
            bar.close()

            wait_until(
                publisher_done.is_set,
                cfg.drain_timeout,
                what="the publisher's outstanding confirms",
            )
            final = confirmed.value
            wait_until(
                lambda: all(counters[q].value >= final for q in QUEUES),
                cfg.drain_timeout,
                what="the consumers to drain the queues",
            )
            drained_at = time.monotonic() - t0
            per_queue = [counters[q].value for q in QUEUES]
            samples.append((drained_at, confirmed.value, min(per_queue), per_queue))
            monitor.sample()
            stop.set()
            reports = {}
            for _ in procs:
                r = results.get(timeout=30)
                reports[r.pop("role")] = r
            for p in procs.values():
                p.join(timeout=15)
        finally:
            stop_publishing.set()
            go.set()
            stop.set()
            for p in procs.values():
                if p.is_alive():
                    p.join(timeout=5)
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5)

    consumed = [(t, c) for t, _, c, _ in samples if t <= publish_end]
    rate = steady_rate(consumed, skip_start=cfg.warmup_s)
    publisher = reports["publisher"]
    total_rate = publisher["confirmed"] / drained_at if drained_at else None
    latency_samples = {q: reports[q].pop("latency_samples_ms") for q in QUEUES}
    return {
        "rate": rate,
        "rate_incl_drain": total_rate,
        "unit": "messages/s consumed and acked by every consumer",
        "config": {
            **cfg.__dict__,
            "warmup_s": cfg.warmup_s,
            "queues": QUEUES,
            "body_bytes": len(envelope(0)[1]),
        },
        "publish_window_s": round(publish_end, 3),
        "drained_after_s": round(drained_at, 3),
        "publisher": publisher,
        "consumers": {q: reports[q] for q in QUEUES},
        "resources": monitor.as_dict(),
        # CPU the machine spent on work outside this benchmark (another process = noisy run)
        "machine_cpu": monitor.machine_dict(),
        # CPU cost per message: steady under other load, unlike the rate
        "cpu_ms_per_message": {
            name: round(st.cpu_s * 1000 / publisher["confirmed"], 4)
            for name, st in monitor.stats.items()
        }
        if publisher["confirmed"]
        else {},
        "timeseries": rate_series([(t, c) for t, _, c, _ in samples], window=1.0),
        "latency_samples_ms": latency_samples,
    }


def scenario(ctx: Any) -> dict[str, Any]:
    """Scenario entry point for ``bench.run`` (``ctx`` is a ``bench.run.BenchContext``)."""
    knobs = {
        "window": ctx.options.get("ceiling_window"),
        "prefetch": ctx.options.get("ceiling_prefetch"),
    }
    cfg = CeilingConfig(
        duration=ctx.ceiling_duration, **{k: v for k, v in knobs.items() if v is not None}
    )
    return run_ceiling(ctx.broker, cfg, progress=ctx.progress)
