"""The dead-letter queue tool: list, show, replay and purge what the consumers parked.

    python -m messaging.operations.dlq list
    python -m messaging.operations.dlq show <service> [--limit 20]
    python -m messaging.operations.dlq replay <service> --event-id 0b6f... [--event-id ...] | --all
    python -m messaging.operations.dlq purge <service> --event-id 0b6f... | --all

The services are the installed consuming services (their specs, messaging/spec.py).

(`make dlq ARGS="list"` runs the same.) It talks AMQP to the broker named by
`RABBITMQ_URL` (default `amqp://guest:guest@localhost:5672/`; the vhost is the URL's path),
or `--url`. Counts come from a passive queue declaration, so they are exact, not the
management API's sampled statistics.

Nothing is lost on the way: `show` takes messages without acking and gives them all back
(requeued; on RabbitMQ 3.10 behind the others, so a second `show` pages on). `replay` acks
a DLQ copy only after the broker confirmed its copy in the work queue; a crash in between
leaves a duplicate, which the inbox absorbs.

Exit codes: 0 done, 1 partly done or the broker unreachable, 2 unknown service or queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from messaging import headers as h
from messaging import spec
from messaging.observability import instrumentation, telemetry
from messaging.publisher import (
    CopySource,
    PublishFailed,
    copy_message,
    open_confirm_channel,
    publish_confirmed,
)
from messaging.topology import QueueTopology

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
BODY_PREVIEW_CHARS = 300

# Headers a replay drops: why it failed last time, and the counters that would make the
# consumer give up at once (a replay starts with a fresh retry budget).
_RESET_HEADERS = frozenset({*h.ERROR_HEADERS, h.ATTEMPT, h.DEFERRALS})


class DlqError(Exception):
    """A problem to report in one line, with the exit code to leave with."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class QueueCount:
    service: str
    queue: str
    messages: int | None  # None: the queue is not declared (the service never ran here)


@dataclass(frozen=True)
class Result:
    done: list[str]  # message ids replayed or purged
    missing: list[str]  # requested event ids that are not in the DLQ


def topology_for(service: str) -> QueueTopology:
    try:
        return QueueTopology.for_service(service)
    except ValueError as exc:
        raise DlqError(str(exc), exit_code=2) from None


async def connect(url: str) -> AbstractConnection:
    try:
        return await aio_pika.connect(url, client_properties={"connection_name": "dlq-tool"})
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DlqError(f"cannot reach RabbitMQ at {_where(url)}: {reason}") from None


async def list_queues(connection: AbstractConnection) -> list[QueueCount]:
    """Every service's dead-letter queue with its message count."""
    counts = []
    for service in sorted(s.name for s in spec.consumers()):
        dlq = topology_for(service).dlq
        counts.append(QueueCount(service, dlq, await ready_count(connection, dlq)))
    return counts


async def show(connection: AbstractConnection, service: str,
               limit: int = 20) -> list[AbstractIncomingMessage]:
    """Up to `limit` messages from the head of the service's DLQ; all stay in the queue."""
    dlq = await _existing_dlq(connection, service)
    async with _channel(connection) as channel:
        queue = await channel.get_queue(dlq, ensure=False)
        taken = await take_unacked(queue, min(limit, await ready_count(connection, dlq) or 0))
        for message in taken:  # give every one back
            await message.nack(requeue=True)
    return taken


async def replay(connection: AbstractConnection, service: str,
                 event_ids: Sequence[str] | None = None) -> Result:
    """Move the DLQ's messages (all, or those with the given event ids) to the work queue."""
    topology = topology_for(service)
    dlq = await _existing_dlq(connection, service)
    if await ready_count(connection, topology.name) is None:
        raise DlqError(f"work queue {topology.name} does not exist", exit_code=2)

    async def move(channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        # Through the service's own exchange (its user may not write to the default one).
        own = await channel.get_exchange(topology.exchange, ensure=False)
        await publish_replay(own, message, topology.name)

    return await _settle(connection, dlq, event_ids, move)


async def purge(connection: AbstractConnection, service: str,
                event_ids: Sequence[str] | None = None) -> Result:
    """Delete the DLQ's messages: all, or those with the given event ids."""
    dlq = await _existing_dlq(connection, service)

    async def drop(_channel: AbstractChannel, _message: AbstractIncomingMessage) -> None:
        return None  # acking it is the deletion

    return await _settle(connection, dlq, event_ids, drop)


@dataclass(frozen=True)
class ParkedMessage:
    """A dead letter kept outside its queue (the console's store): what a replay needs."""

    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    correlation_id: str | None
    type: str | None
    timestamp: datetime | None
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"


class Replayable(CopySource, Protocol):
    @property
    def headers(self) -> Mapping[str, Any] | None: ...


def replay_copy(message: Replayable) -> aio_pika.Message:
    """The message as first published: same body, ids, type, time and trace context;
    without the failure headers, the broker's x- headers and the retry counters."""
    headers = {
        k: v for k, v in (message.headers or {}).items()
        if not k.startswith("x-") and k not in _RESET_HEADERS
    }
    return copy_message(message, headers)


async def publish_replay(exchange: AbstractExchange, message: Replayable,
                         work_queue: str) -> None:
    """Publish the replay copy of a dead letter to `work_queue` through `exchange` (a direct
    exchange bound to it by its name) and wait for the broker's confirm (PublishFailed).
    The CLI and the console both replay with this. In the order's trace: the replay's
    publish is a child of the parked message's context."""
    await publish_confirmed(exchange, replay_copy(message), routing_key=work_queue,
                            parent=instrumentation.trace_context(message))


async def _settle(
    connection: AbstractConnection, dlq: str, event_ids: Sequence[str] | None,
    action: Callable[[AbstractChannel, AbstractIncomingMessage], Awaitable[None]],
) -> Result:
    """Apply `action` to each selected DLQ message, then ack it; requeue the rest.

    The pass is bounded by the count at its start, so messages that come back to the DLQ
    during a replay (the fault is not fixed yet) are not taken again in the same pass.
    """
    wanted = set(event_ids) if event_ids else None
    done: list[str] = []
    async with _channel(connection, confirm=True) as channel:
        queue = await channel.get_queue(dlq, ensure=False)
        taken = await take_unacked(queue, await ready_count(connection, dlq) or 0)
        settled: set[int] = set()
        try:
            for message in taken:
                if wanted is not None and message.message_id not in wanted:
                    continue
                try:
                    await action(channel, message)
                except PublishFailed as exc:
                    raise DlqError(
                        f"stopped after {len(done)}: {message.message_id} not accepted: {exc}"
                    ) from None
                await message.ack()
                settled.add(id(message))
                done.append(message.message_id or "-")
        finally:
            for message in taken:  # whatever was not settled goes back, in order
                if id(message) not in settled and not channel.is_closed:
                    await message.nack(requeue=True)
    missing = sorted(wanted - set(done)) if wanted is not None else []
    return Result(done, missing)


async def take_unacked(queue: AbstractQueue, count: int) -> list[AbstractIncomingMessage]:
    """Get up to `count` messages without acking: held by us, so each get returns the next;
    whatever is not acked goes back to the queue when the channel closes."""
    taken = []
    for _ in range(count):
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        taken.append(message)
    return taken


async def _existing_dlq(connection: AbstractConnection, service: str) -> str:
    dlq = topology_for(service).dlq
    if await ready_count(connection, dlq) is None:
        raise DlqError(f"queue {dlq} does not exist (has {service} ever run here?)", exit_code=2)
    return dlq


async def ready_count(connection: AbstractConnection, queue: str) -> int | None:
    """Ready messages in `queue`, or None when it does not exist."""
    # A passive declaration of a missing queue closes its channel, hence one of its own.
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None
    result = declared.declaration_result.message_count
    await channel.close()
    return result


class _channel:  # noqa: N801 (used like a function)
    """A channel that is closed afterwards; closing requeues anything left unacked."""

    def __init__(self, connection: AbstractConnection, confirm: bool = False):
        self._connection, self._confirm = connection, confirm

    async def __aenter__(self) -> AbstractChannel:
        if self._confirm:
            self._ch = await open_confirm_channel(self._connection)
        else:
            self._ch = await self._connection.channel()
        return self._ch

    async def __aexit__(self, *exc: object) -> None:
        if not self._ch.is_closed:
            await self._ch.close()


def _where(url: str) -> str:
    """host:port/vhost of an AMQP URL, without the credentials."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{parts.hostname}:{parts.port or 5672} vhost {vhost!r}"


def describe(message: AbstractIncomingMessage) -> str:
    """A human-readable block: ids, failure headers, broker dead-lettering, body preview."""
    headers = message.headers or {}
    lines = [
        f"event {message.message_id or '-'}  type {message.type or '-'}  "
        f"correlation {message.correlation_id or '-'}  published {message.timestamp or '-'}"
    ]
    lines += [f"  {name}: {_text(headers[name])}" for name in h.ERROR_HEADERS if name in headers]
    for name in (h.ATTEMPT, h.DEFERRALS):
        if name in headers:
            lines.append(f"  {name}: {_text(headers[name])}")
    # Dead-lettered by the broker itself (delivery limit: the consumer kept crashing).
    deaths = headers.get("x-death")
    for death in deaths if isinstance(deaths, list) else []:
        if not isinstance(death, dict):
            continue
        lines.append(
            f"  dead-lettered by the broker: {_text(death.get('reason'))} "
            f"from {_text(death.get('queue'))} (x{_text(death.get('count'))})"
        )
    try:
        body = message.body.decode()
    except UnicodeDecodeError:
        body = repr(message.body)
    if len(body) > BODY_PREVIEW_CHARS:
        body = body[:BODY_PREVIEW_CHARS] + f"... ({len(message.body)} bytes)"
    lines.append(f"  body: {body}")
    return "\n".join(lines)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def run(args: argparse.Namespace) -> int:
    if args.command != "list":
        topology_for(args.service)  # unknown service: fail before connecting
    connection = await connect(args.url)
    try:
        if args.command == "list":
            counts = await list_queues(connection)
            print(f"{'service':8} {'dead-letter queue':24} messages")
            for c in counts:
                shown = "(not declared)" if c.messages is None else c.messages
                print(f"{c.service:8} {c.queue:24} {shown}")
            return 0
        if args.command == "show":
            messages = await show(connection, args.service, args.limit)
            for message in messages:
                print(describe(message))
            print(f"{len(messages)} message(s) shown; all still in the queue")
            return 0
        ids = None if args.all else args.event_id
        if args.command == "replay":
            result = await replay(connection, args.service, ids)
            verb = f"replayed to {topology_for(args.service).name}"
        else:
            result = await purge(connection, args.service, ids)
            verb = "purged"
        for message_id in result.done:
            print(f"{verb}: {message_id}")
        print(f"{len(result.done)} message(s) {verb}")
        for event_id in result.missing:
            print(f"not in the DLQ: {event_id}", file=sys.stderr)
        return 1 if result.missing else 0
    finally:
        await connection.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m messaging.operations.dlq", description="List, show, replay and purge DLQs."
    )
    p.add_argument("--url", default=os.environ.get("RABBITMQ_URL", DEFAULT_URL),
                   help="AMQP URL incl. vhost (default: $RABBITMQ_URL or the local broker)")
    commands = p.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="each service's dead-letter queue with its count")
    show_p = commands.add_parser("show", help="messages with their failure headers (kept)")
    show_p.add_argument("service")
    show_p.add_argument("--limit", type=int, default=20)
    for name, text in (("replay", "back to the service's work queue"),
                       ("purge", "delete for good")):
        cmd = commands.add_parser(name, help=text)
        cmd.add_argument("service")
        which = cmd.add_mutually_exclusive_group(required=True)
        which.add_argument("--event-id", action="append", metavar="ID",
                           help="this event (message id); repeat for several")
        which.add_argument("--all", action="store_true", help="every message in the DLQ")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "limit", 1) < 1:
        print("dlq: --limit must be at least 1", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args))
    except DlqError as exc:
        print(f"dlq: {exc}", file=sys.stderr)
        return exc.exit_code
    except aio_pika.exceptions.AMQPError as exc:  # e.g. no permission on a queue
        print(f"dlq: the broker refused: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # A replay's publish span goes where the service's spans go (OTEL_EXPORTER_OTLP_ENDPOINT,
    # OTEL_SERVICE_NAME) when that is set, inside the replayed order's trace.
    telemetry.setup_tracing("dlq")
    try:
        code = main()
    finally:
        telemetry.shutdown_tracing()
    sys.exit(code)
