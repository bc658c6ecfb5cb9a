"""Replay: dead letters back to the work queue they came from, at a chosen rate, stoppable.

Through the console's own direct exchange `console.replay`, bound to each work queue by the
queue's name (the console's broker user may write there and nowhere else), with publisher
confirms; a dead letter is marked replayed only after the broker confirmed its copy. A
replay of an event its service has applied already is a no-op there (the inbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection
from aiormq.exceptions import ChannelAccessRefused, ChannelNotFoundEntity

from console import metrics, store
from contracts import utcnow
from messaging.chassis.runtime import BrokerLink
from messaging.operations.dlq import ParkedMessage, publish_replay
from messaging.publisher import PublishFailed, open_confirm_channel

log = logging.getLogger("console.replay")
EXCHANGE = "console.replay"


async def ensure_routes(connection: AbstractConnection, work_queues: Sequence[str]) -> None:
    """Make sure `console.replay` exists and routes to each work queue.

    Where the console may configure (a local broker's guest user) it declares and binds them;
    in the compose stack the broker's definitions hold both and the console's user may not
    bind (that needs write on the queue): a refused bind is left to the definitions, and a
    replay to a queue without the binding fails as unroutable.
    """
    channel = await connection.channel()
    try:
        await channel.get_exchange(EXCHANGE, ensure=True)
    except ChannelNotFoundEntity:
        channel = await connection.channel()
        await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    for queue in work_queues:
        try:
            await (await channel.get_queue(queue, ensure=False)).bind(EXCHANGE, queue)
        except (ChannelAccessRefused, ChannelNotFoundEntity) as exc:
            log.debug("not binding %s to %s: %s", EXCHANGE, queue, exc)
            channel = await connection.channel()
    with contextlib.suppress(Exception):
        await channel.close()


def parked_message(row: dict[str, Any]) -> ParkedMessage:
    return ParkedMessage(
        body=row["body"], headers=row["headers"], message_id=row["event_id"],
        correlation_id=row["correlation_id"], type=row["event_type"],
        timestamp=row["published_at"], content_type=row["content_type"],
        content_encoding=row["content_encoding"])


class Replayer:
    """Runs replay jobs in the background; each can be stopped."""

    def __init__(self, sessions: store.Sessions, broker: BrokerLink,
                 work_queues: Sequence[str]):
        self._sessions, self._broker, self._work_queues = sessions, broker, work_queues
        self._stops: dict[int, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, ids: Sequence[int], *, user: str, target: str, rate: float,
                    batch: int, action: str, detail: str = "") -> tuple[int, int]:
        """Claim the replayable ones among `ids`, record the job and who asked for it, and
        start sending; returns (job id, how many it will send)."""
        async with self._sessions() as session, session.begin():
            claimed = await store.claim_for_replay(session, ids)
            job = await store.start_replay_job(session, target, user, rate, batch,
                                               len(claimed))
            await store.record(session, user, action, target,
                               f"replay {job}: {len(claimed)} dead letter(s) at "
                               f"{rate:g}/s in batches of {batch}{detail}")
        self._stops[job] = asyncio.Event()
        task = asyncio.create_task(self._run(job, claimed, rate, batch), name=f"replay-{job}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job, len(claimed)

    def stop(self, job: int) -> bool:
        """Ask a running job to stop after the message it is sending; False if not running."""
        event = self._stops.get(job)
        if event is None:
            return False
        event.set()
        return True

    async def close(self) -> None:
        for event in self._stops.values():
            event.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    async def _run(self, job: int, ids: list[int], rate: float, batch: int) -> None:
        sent: list[int] = []
        confirmed: list[int] = []  # sent, not yet marked
        status, error = "finished", None
        try:
            connection = await self._broker.connection()
            await ensure_routes(connection, self._work_queues)
            channel = await open_confirm_channel(connection)
            exchange = await channel.get_exchange(EXCHANGE, ensure=False)
            started = time.monotonic()
            for start in range(0, len(ids), batch):
                if self._stops[job].is_set():
                    status = "stopped"
                    break
                for row in await store.load(self._sessions, ids[start:start + batch]):
                    # The pace: message n leaves no earlier than n / rate after the start.
                    delay = started + len(sent) / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await publish_replay(exchange, parked_message(row), row["queue"])
                    confirmed.append(row["id"])
                    sent.append(row["id"])
                    metrics.REPLAYED.labels(row["service"]).inc()
                async with self._sessions() as session, session.begin():
                    await store.mark_replayed(session, confirmed, utcnow())
                confirmed = []
                await store.update_replay_job(self._sessions, job, done=len(sent))
            await channel.close()
        except PublishFailed as exc:
            status, error = "failed", f"not confirmed: {exc}"
        except Exception as exc:
            log.exception("replay %d failed", job)
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            done = set(sent)
            unsent = [i for i in ids if i not in done]
            with contextlib.suppress(Exception):
                # Those confirmed but not yet marked (the failure came in between) are
                # marked now; the rest go back to parked.
                async with self._sessions() as session, session.begin():
                    await store.mark_replayed(session, confirmed, utcnow())
                await store.release(self._sessions, unsent)
                await store.update_replay_job(self._sessions, job, done=len(sent),
                                              status=status, error=error)
            self._stops.pop(job, None)
