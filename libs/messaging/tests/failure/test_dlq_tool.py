"""`python -m messaging.operations.dlq`: list, show, replay and purge, against a real broker.

The CLI runs in a worker thread (it owns its event loop, as from a shell); the queues it
works on live in the test's throwaway vhost.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import aio_pika
import pytest
from opentelemetry import propagate
from sqlalchemy import Column, MetaData, String, Table, func, insert, select

from contracts import utcnow
from devstack import events
from devstack.stack import free_port
from devstack.wait import eventually_async
from messaging import headers as h
from messaging import inbox, spec
from messaging.chassis import db
from messaging.inbox import Inbox, Outcome
from messaging.operations import dlq
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.spec import every
from messaging.topology import QueueTopology, ensure_exchange

pytestmark = pytest.mark.integration

POINTS = QueueTopology.for_service("points")
TRACEPARENT = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(dlq.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
async def points_queues(connection):
    """The points topology, declared as the service would at start."""
    await ensure_exchange(connection)
    channel = await connection.channel()
    await POINTS.declare(channel)
    await channel.close()


async def park(connection, event=None, **extra_headers) -> str:
    """Put a message into points.events.dlq as the consumer does: failure headers and all."""
    event = event or events.order_paid()
    headers = {
        "traceparent": TRACEPARENT, h.ATTEMPT: 3, h.DEFERRALS: 1,
        h.ERROR_CLASS: "exhausted", h.ERROR_SERVICE: "points", h.ERROR_TYPE: "TimeoutError",
        h.ERROR_MESSAGE: "smtp server did not answer", h.ERROR_ATTEMPTS: 4,
        h.ERROR_AT: utcnow().isoformat(), h.ERROR_QUEUE: POINTS.name, **extra_headers,
    }
    channel = await open_confirm_channel(connection)
    message = build_message(event.to_json(), message_id=str(event.event_id),
                            correlation_id=event.correlation_id, event_type=event.event_type,
                            timestamp=event.occurred_at, headers=headers)
    # Parked inside the trace it failed in, as the consumer's own copy is.
    await publish_confirmed(channel.default_exchange, message, routing_key=POINTS.dlq,
                            parent=propagate.extract({"traceparent": TRACEPARENT}))
    await channel.close()
    return str(event.event_id)


async def ids_in(connection, queue: str) -> list[str]:
    """Message ids in `queue`, head first, leaving them there."""
    channel = await connection.channel()
    q = await channel.get_queue(queue, ensure=False)
    taken = await dlq.take_unacked(q, await dlq.ready_count(connection, queue))
    await channel.close()  # unacked: all go back
    return [m.message_id for m in taken]


async def assert_ids(connection, queue: str, expected: list[str]) -> None:
    """Eventually exactly the messages `expected` in `queue`. A requeue is asynchronous in a
    quorum queue (another channel sees the returned messages a moment later) and puts them
    behind the others on 3.10, so the order is not compared: it means nothing in a DLQ."""
    async def matches():
        return sorted(await ids_in(connection, queue)) == sorted(expected)

    await eventually_async(matches, timeout=20, message=f"{queue} holds {expected}")


async def test_list_shows_every_services_dead_letter_queue_with_its_count(
    amqp_url, connection, points_queues, capsys
):
    await park(connection)
    await park(connection)

    code, out, _ = await cli(capsys, "--url", amqp_url, "list")

    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["points"].split()[1:] == ["points.events.dlq", "2"]
    assert "(not declared)" in lines["mailer"] and "(not declared)" in lines["audit"]


async def test_show_prints_the_failure_headers_and_leaves_every_message_in_place(
    amqp_url, connection, points_queues, capsys
):
    parked = [await park(connection) for _ in range(3)]

    code, out, _ = await cli(capsys, "--url", amqp_url, "show", "points", "--limit", "2")

    assert code == 0
    assert parked[0] in out and parked[1] in out and parked[2] not in out
    assert "error-class: exhausted" in out
    assert "error-message: smtp server did not answer" in out
    assert "error-attempts: 4" in out
    assert "2 message(s) shown; all still in the queue" in out
    await assert_ids(connection, POINTS.dlq, parked)  # all still there


async def test_replay_by_event_id_sends_that_message_back_as_first_published(
    amqp_url, connection, points_queues, capsys
):
    event = events.order_paid()
    other = await park(connection)
    await park(connection, event, **{"x-custom": "broker bookkeeping"})

    code, out, _ = await cli(capsys, "--url", amqp_url, "replay", "points",
                             "--event-id", str(event.event_id))

    assert code == 0
    assert f"replayed to points.events: {event.event_id}" in out
    await assert_ids(connection, POINTS.dlq, [other])
    channel = await connection.channel()
    queue = await channel.get_queue(POINTS.name, ensure=False)
    replayed = await queue.get(no_ack=True)
    assert replayed.body == event.to_json()
    assert replayed.message_id == str(event.event_id)
    assert replayed.correlation_id == event.correlation_id
    assert replayed.type == "OrderPaid"
    assert replayed.timestamp == event.occurred_at.replace(microsecond=0)
    assert replayed.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    # Still the trace it failed in (the replay's publish span, when traced, is a child in it).
    assert replayed.headers["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    # A fresh start: no failure story, no retry counters, no x- headers.
    dropped = {*h.ERROR_HEADERS, h.ATTEMPT, h.DEFERRALS, "x-custom"}
    assert not dropped & set(replayed.headers)
    await channel.close()


async def test_replay_of_an_event_id_not_in_the_dlq_says_so_and_exits_1(
    amqp_url, connection, points_queues, capsys
):
    kept = await park(connection)
    missing = str(uuid.uuid4())

    code, out, err = await cli(capsys, "--url", amqp_url, "replay", "points",
                               "--event-id", missing)

    assert code == 1
    assert f"not in the DLQ: {missing}" in err
    await assert_ids(connection, POINTS.dlq, [kept])


async def test_purge_by_event_id_deletes_only_that_message_and_all_deletes_the_rest(
    amqp_url, connection, points_queues, capsys
):
    first, second, third = [await park(connection) for _ in range(3)]

    code, out, _ = await cli(capsys, "--url", amqp_url, "purge", "points", "--event-id", second)
    assert code == 0 and f"purged: {second}" in out
    await assert_ids(connection, POINTS.dlq, [first, third])

    code, out, _ = await cli(capsys, "--url", amqp_url, "purge", "points", "--all")
    assert code == 0 and "2 message(s) purged" in out
    await assert_ids(connection, POINTS.dlq, [])


async def test_replay_and_purge_need_event_ids_or_all(amqp_url, capsys):
    with pytest.raises(SystemExit) as exited:
        dlq.main(["--url", amqp_url, "replay", "points"])
    assert exited.value.code == 2
    assert "one of the arguments --event-id --all is required" in capsys.readouterr().err


def test_an_unknown_service_is_a_one_line_error_and_exit_2(amqp_url):
    done = subprocess.run([sys.executable, "-m", "messaging.operations.dlq", "show",
                           "no-such-service"],
                          capture_output=True, text=True, timeout=60,
                          env={"RABBITMQ_URL": amqp_url, "PATH": ""})
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "dlq: unknown service 'no-such-service'; known: "
        + ", ".join(sorted(s.name for s in spec.consumers()))
    )


async def test_a_dead_letter_queue_that_does_not_exist_is_an_error_and_exit_2(amqp_url, capsys):
    code, _, err = await cli(capsys, "--url", amqp_url, "show", "mailer")
    assert code == 2
    assert err.strip() == "dlq: queue mailer.events.dlq does not exist (has mailer ever run here?)"


async def test_an_unreachable_broker_is_a_one_line_error_and_exit_1(capsys):
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    code, _, err = await cli(capsys, "--url", url, "list")
    assert code == 1
    assert err.startswith("dlq: cannot reach RabbitMQ at 127.0.0.1:")
    assert "guest" not in err and len(err.strip().splitlines()) == 1


# -- replay after the fault is fixed: processed once, however often it is replayed ---------

effects_metadata = MetaData()
effects = Table("effects", effects_metadata, Column("event_id", String(36), nullable=False))


async def test_replayed_after_the_fix_is_processed_once_and_replaying_again_changes_nothing(
    amqp_url, connection, publish, start_consumer, tmp_path, capsys
):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/points.db")
    await db.create_schema(engine, effects_metadata, inbox.metadata)
    sessions = db.session_factory(engine)
    box = Inbox(sessions)
    fault = {"on": True}
    calls = []

    async def grant_points(event, session):
        calls.append(event.event_id)
        if fault["on"]:
            raise ConnectionError("ledger database unreachable")
        await session.execute(insert(effects).values(event_id=str(event.event_id)))

    async def effect_count() -> int:
        async with sessions() as session:
            return await session.scalar(select(func.count()).select_from(effects))

    outcomes = []

    async def process(event):
        outcomes.append(await box.process(event, every(grant_points)))
        return outcomes[-1]

    await start_consumer(process, delays=(1,))
    event = events.order_paid()
    await publish(event)
    [parked] = await eventually_async(lambda: dlq.show(connection, "points"), timeout=30)
    assert len(calls) == 2  # first try + one retry

    fault["on"] = False
    code, out, _ = await cli(capsys, "--url", amqp_url, "replay", "points", "--all")
    assert code == 0 and "1 message(s) replayed" in out
    await eventually_async(effect_count, timeout=20, message="replayed event applied")

    # The same DLQ copy again (say the tool died after publishing, before its ack): replay.
    channel = await open_confirm_channel(connection)
    await publish_confirmed(channel.default_exchange, dlq.replay_copy(parked),
                            routing_key=POINTS.dlq)
    await channel.close()
    code, out, _ = await cli(capsys, "--url", amqp_url, "replay", "points", "--all")
    assert code == 0 and "1 message(s) replayed" in out
    await eventually_async(lambda: _true(Outcome.DUPLICATE in outcomes), timeout=20,
                           message="second replay consumed")
    assert outcomes == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert await effect_count() == 1
    assert len(calls) == 3  # the second replay never reached the handler: inbox duplicate
    await engine.dispose()


async def _true(value):
    return value
