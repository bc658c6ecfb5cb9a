"""Replay, stop and edit & replay against a real broker, with no service consuming: the
replayed copies stay in the work queue, where the test reads them. The console connects as a
user with exactly the permissions deploy/rabbitmq/definitions.json gives `console`, and the
exchange and binding it replays through are declared as the definitions declare them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import quote

import aio_pika
import httpx
import pytest
from opentelemetry import propagate

from console.replay import EXCHANGE
from contracts import utcnow
from devstack import events, throwaway
from devstack.console import ConsoleProcess
from devstack.stack import free_port
from devstack.wait import eventually, eventually_async
from messaging import headers as h
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.topology import QueueTopology, ensure_exchange

pytestmark = pytest.mark.integration

POINTS = QueueTopology.for_service("points")
TRACE_ID = uuid.uuid4().hex


@pytest.fixture
async def parked(amqp_url):
    """park(n): n OrderPaid events in points.events.dlq, as the consumer parks them."""
    connection = await aio_pika.connect(amqp_url)
    await ensure_exchange(connection)
    channel = await connection.channel()
    await POINTS.declare(channel)
    # As the definitions have them: the console's exchange, bound to the work queue.
    replay = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    await (await channel.get_queue(POINTS.name)).bind(replay, routing_key=POINTS.name)
    confirm = await open_confirm_channel(connection)
    own = await confirm.get_exchange(POINTS.exchange)

    async def park(n: int) -> list:
        parked_events = []
        for _ in range(n):
            event = events.order_paid()
            headers = {
                h.ERROR_CLASS: "permanent", h.ERROR_SERVICE: "points",
                h.ERROR_TYPE: "ValueError", h.ERROR_MESSAGE: "no such customer",
                h.ERROR_ATTEMPTS: 1, h.ERROR_AT: utcnow().isoformat(),
                h.ERROR_QUEUE: POINTS.name, h.ATTEMPT: 1,
                "traceparent": f"00-{TRACE_ID}-{uuid.uuid4().hex[:16]}-01"}
            message = build_message(
                event.to_json(), message_id=str(event.event_id),
                correlation_id=event.correlation_id, event_type=event.event_type,
                timestamp=event.occurred_at, headers=headers)
            # Published in the trace it names, as the consumer's copy is: with a tracer
            # provider installed (another test module on this worker may have), the publish
            # span's context replaces the header, and without a parent it would be a new trace.
            await publish_confirmed(own, message, routing_key=POINTS.dlq,
                                    parent=propagate.extract(headers))
            parked_events.append(event)
        return parked_events

    park.connection = connection
    yield park
    await connection.close()


DEFINITIONS = json.loads((Path(__file__).resolve().parents[3] / "deploy" / "rabbitmq"
                          / "definitions.json").read_text())


@pytest.fixture
def console_url(vhost):
    """An AMQP URL of a user with the console's permissions of the definitions, in `vhost`."""
    name = vhost[0]
    (rights,) = [p for p in DEFINITIONS["permissions"] if p["user"] == "console"]
    user, password = f"console-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with throwaway.management() as management:
        management.put(f"/api/users/{user}", json={"password": password, "tags": ""}
                       ).raise_for_status()
        management.put(f"/api/permissions/{quote(name, safe='')}/{user}", json={
            k: rights[k] for k in ("configure", "write", "read")}).raise_for_status()
    try:
        yield f"amqp://{user}:{password}@{throwaway.AMQP_HOST}/{quote(name, safe='')}"
    finally:
        with throwaway.management() as management:
            management.delete(f"/api/users/{user}")


@pytest.fixture
def console(console_url, parked, tmp_path):
    process = ConsoleProcess(rabbitmq_url=console_url, port=free_port(),
                             database_url=f"sqlite+aiosqlite:///{tmp_path}/console.db",
                             log_path=tmp_path / "console.log",
                             extra_env={"CONSOLE_EDIT_AND_REPLAY": "on"})
    process.start()
    try:
        process.wait_ready(timeout=180)
        yield process
    finally:
        process.stop()


def api(console, method, path, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{console.url}{path}", auth=console.auth, timeout=10, **kwargs)


def dead_letters(console, **params) -> list[dict]:
    return api(console, "GET", "/api/dead-letters", params=params).json()


async def work_queue(connection) -> list[aio_pika.abc.AbstractIncomingMessage]:
    channel = await connection.channel()
    queue = await channel.get_queue(POINTS.name, ensure=False)
    taken = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        taken.append(message)
    await channel.close()
    return taken


async def test_a_stopped_replay_sends_no_more_and_parks_the_rest_again(parked, console):
    await parked(6)
    eventually(lambda: len(dead_letters(console, status="parked")) == 6, timeout=30)
    group = api(console, "GET", "/api/groups").json()[0]

    started = api(console, "POST", f"/api/groups/{group['id']}/replay",
                  json={"rate_per_second": 0.5, "batch": 1}).json()
    eventually(lambda: api(console, "GET", f"/api/replays/{started['replay_id']}")
               .json()["done"] >= 1, timeout=20, message="first replayed")
    stop = api(console, "POST", f"/api/replays/{started['replay_id']}/stop")
    assert stop.status_code == 200, stop.text
    job = eventually(lambda: j if (j := api(console, "GET", f"/api/replays/{started['replay_id']}")
                                   .json())["status"] != "running" else None, timeout=20)

    assert job["status"] == "stopped" and 1 <= job["done"] < 6
    sent = await work_queue(parked.connection)
    assert len(sent) == job["done"]
    assert len(dead_letters(console, status="replayed")) == job["done"]
    assert len(dead_letters(console, status="parked")) == 6 - job["done"]
    actions = [r["action"] for r in api(console, "GET", "/api/audit").json()]
    assert actions[:2] == ["stop-replay", "replay-group"]


async def test_edit_and_replay_checks_the_contract_keeps_the_event_id_and_records_the_diff(
    parked, console
):
    [event] = await parked(1)
    [row] = eventually(lambda: dead_letters(console), timeout=30)
    body = json.loads(event.to_json())
    amount = body["data"]["amount"]  # version 2: {value, currency}

    body["data"]["amount"] = "lots"
    refused = api(console, "POST", f"/api/dead-letters/{row['id']}/edit-and-replay",
                  json={"body": json.dumps(body)})
    assert refused.status_code == 422 and "data.amount" in refused.json()["detail"]

    body["data"]["amount"] = {**amount, "value": 999}
    accepted = api(console, "POST", f"/api/dead-letters/{row['id']}/edit-and-replay",
                   json={"body": json.dumps(body)})
    assert accepted.status_code == 202, accepted.text

    async def replayed():
        return await work_queue(parked.connection)

    [copy] = await eventually_async(replayed, timeout=20, message="the edited copy")
    assert copy.message_id == str(event.event_id)
    assert json.loads(copy.body)["data"]["amount"]["value"] == 999
    assert not any(k.startswith("error-") for k in copy.headers)
    edit = next(r for r in api(console, "GET", "/api/audit").json() if r["action"] == "edit")
    changed = edit["detail"].splitlines()
    assert any(line.startswith("-") and '"value": 1200' in line for line in changed)
    assert any(line.startswith("+") and '"value": 999' in line for line in changed)
    assert edit["user"] == console.user


async def test_an_archived_dead_letter_that_fails_again_is_parked_again_in_its_own_row(
    parked, console
):
    [event] = await parked(1)
    [row] = eventually(lambda: dead_letters(console), timeout=30)
    api(console, "POST", f"/api/dead-letters/{row['id']}/archive")
    assert dead_letters(console)[0]["status"] == "archived"

    connection = parked.connection
    channel = await open_confirm_channel(connection)
    own = await channel.get_exchange(POINTS.exchange)
    again = build_message(event.to_json(), message_id=str(event.event_id),
                          correlation_id=event.correlation_id, event_type="OrderPaid",
                          timestamp=event.occurred_at, headers={
                              h.ERROR_CLASS: "permanent", h.ERROR_TYPE: "ValueError",
                              h.ERROR_MESSAGE: "no such customer",
                              h.ERROR_AT: utcnow().isoformat()})
    await publish_confirmed(own, again, routing_key=POINTS.dlq)

    [parked_again] = eventually(lambda: dead_letters(console, status="parked"), timeout=30)
    assert parked_again["id"] == row["id"]
    assert parked_again["first_failed_at"] == row["first_failed_at"]
    assert parked_again["last_failed_at"] > row["last_failed_at"]


async def test_wrong_requests_get_a_clear_error_and_change_nothing(parked, console):
    await parked(1)
    [row] = eventually(lambda: dead_letters(console), timeout=30)
    [group] = api(console, "GET", "/api/groups").json()
    for method, path, body, code in [
        ("GET", "/api/dead-letters/999999", None, 404),
        ("POST", "/api/dead-letters/999999/replay", None, 404),
        ("POST", "/api/dead-letters/999999/archive", None, 404),
        ("POST", "/api/dead-letters/999999/edit-and-replay", {"body": "{}"}, 404),
        ("POST", "/api/groups/0000000000000000/replay", {"rate_per_second": 5, "batch": 1}, 404),
        ("POST", "/api/groups/0000000000000000/archive", None, 404),
        ("POST", "/api/replays/999999/stop", None, 404),
        ("GET", "/api/replays/999999", None, 404),
        ("POST", f"/api/groups/{group['id']}/replay", {"rate_per_second": 0, "batch": 1}, 422),
        ("POST", f"/api/dead-letters/{row['id']}/edit-and-replay", {"body": "{oops"}, 422),
        ("GET", "/api/dead-letters?failed_after=yesterday", None, 422),
    ]:
        response = api(console, method, path, **({"json": body} if body is not None else {}))
        assert response.status_code == code, (path, response.text)
    # A time without a zone is UTC: the dead letter failed before now.
    now = utcnow().replace(tzinfo=None).isoformat()
    assert [d["id"] for d in dead_letters(console, failed_before=now)] == [row["id"]]
    assert dead_letters(console, failed_after=now) == []
    assert [d["status"] for d in dead_letters(console)] == ["parked"]
    assert api(console, "GET", "/api/audit").json() == []


async def test_the_pages_show_a_dead_letter_its_body_and_its_trace_and_filter_the_list(
    parked, console
):
    await parked(1)
    [row] = eventually(lambda: dead_letters(console), timeout=30)

    def page(path: str, **params) -> str:
        response = api(console, "GET", path, params=params)
        assert response.status_code == 200, response.text
        return response.text

    one = page(f"/dead-letters/{row['id']}")
    assert f'href="http://127.0.0.1:16686/trace/{TRACE_ID}"' in one
    assert '<span class="key">&#34;order_id&#34;</span>' in one
    assert "edit &amp; replay" in one  # turned on for this console
    assert "no such customer" in page("/dead-letters", service="points", status="parked")
    assert "no such customer" not in page("/dead-letters", service="audit")
    assert "points" in page("/")
    assert page("/audit")


async def test_dlqs_declared_after_the_console_started_are_taken_too(
    amqp_url, console_url, tmp_path
):
    console = ConsoleProcess(rabbitmq_url=console_url, port=free_port(),
                             database_url=f"sqlite+aiosqlite:///{tmp_path}/console.db",
                             log_path=tmp_path / "console.log")
    console.start()
    connection = await aio_pika.connect(amqp_url)
    try:
        console.wait_ready(timeout=180)  # no DLQ exists yet: it keeps looking
        await ensure_exchange(connection)
        channel = await open_confirm_channel(connection)
        for service in ("points", "mailer"):  # one after the other, each parking one
            topology = QueueTopology.for_service(service)
            await topology.declare(channel)
            event = events.order_paid()
            await publish_confirmed(
                await channel.get_exchange(topology.exchange),
                build_message(event.to_json(), message_id=str(event.event_id),
                              correlation_id=event.correlation_id, event_type="OrderPaid",
                              timestamp=event.occurred_at,
                              headers={h.ERROR_CLASS: "permanent", h.ERROR_TYPE: "E",
                                       h.ERROR_MESSAGE: service}),
                routing_key=topology.dlq)
            eventually(lambda s=service: [d["service"] for d in dead_letters(console)
                                          if d["service"] == s], timeout=30,
                       message=f"{service}'s dead letter taken")
        assert sorted(d["service"] for d in dead_letters(console)) == ["mailer", "points"]
    finally:
        await connection.close()
        console.stop()
