"""The console against the real thing: the five services as processes in a throwaway vhost,
a real SMTP server that refuses mail and then accepts it, a poison message, and the console
as its own process, used through its JSON API as a script would."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import aio_pika
import httpx
import pytest

from devstack import smtp_sink, throwaway
from devstack.console import ConsoleProcess
from devstack.scrape import metric
from devstack.smtp_sink import mails_in
from devstack.stack import SERVICES, Stack, free_port
from devstack.wait import eventually
from messaging.publisher import open_confirm_channel, publish_confirmed
from messaging.topology import EXCHANGE

# Six processes start on a shared machine: the start-up, not the test, takes the time.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ORDERS = 4  # four refused thank-you mails; each order's shipped mail then waits for its
# thank-you mail until its deferrals are used up (out-of-order): parked too
CONSUMERS = ("points", "mailer", "audit", "shipping")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    port = free_port()
    controller, smtp = smtp_sink.start(tmp / "mail", port=port)
    smtp.fail_until = time.monotonic() + 3600  # every mail refused (451) until told
    with throwaway.throwaway_vhost("console") as (vhost, url):
        stack = Stack(rabbitmq_url=url, smtp_port=port, log_dir=tmp,
                      database_urls={s: f"sqlite+aiosqlite:///{tmp}/{s}.db" for s in SERVICES},
                      ports={s: free_port() for s in SERVICES},
                      # A refused mail is parked in ~1 s, a shipped mail waiting for it in ~2 s.
                      extra_env={"RETRY_DELAYS": "1", "MAX_DEFERRALS": "2"})
        console = ConsoleProcess(rabbitmq_url=url, database_url=f"sqlite+aiosqlite:///{tmp}/c.db",
                                 port=free_port(), log_path=tmp / "console.log")
        try:
            stack.start()
            console.start()
            stack.wait_ready(timeout=180)
            console.wait_ready(timeout=180)
            yield stack, console, smtp, tmp / "mail", vhost
        finally:
            console.stop()
            stack.stop()
            controller.stop()


def api(console: ConsoleProcess, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{console.url}{path}", auth=console.auth, timeout=10,
                         **kwargs)


def groups(console: ConsoleProcess) -> list[dict]:
    response = api(console, "GET", "/api/groups")
    assert response.status_code == 200, response.text
    return response.json()


def wait_replay(console: ConsoleProcess, replay_id: int) -> dict:
    return eventually(lambda: j if (j := api(console, "GET", f"/api/replays/{replay_id}")
                                    .json())["status"] != "running" else None,
                      timeout=30, message=f"replay {replay_id} ends")


async def publish_poison(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    channel = await open_confirm_channel(connection)
    exchange = await channel.get_exchange(EXCHANGE)
    await publish_confirmed(exchange, aio_pika.Message(b"{not json", message_id=str(uuid.uuid4())),
                            routing_key="order.paid")
    await connection.close()


def test_poison_and_refused_mails_are_grouped_replayed_once_archived_and_audited(system):
    stack, console, smtp, mail_dir, _vhost = system
    for _ in range(ORDERS):
        response = httpx.post(f"{stack.url('payment')}/payments", timeout=10, json={
            "order_id": str(uuid.uuid4()), "customer_id": f"c-{uuid.uuid4().hex[:8]}",
            "email": "buyer@example.com", "amount": 1200, "currency": "JPY"})
        assert response.status_code == 201, response.text
    asyncio.run(publish_poison(stack.rabbitmq_url))

    # Parked within seconds: one poison group per consuming service; the refused mails in
    # one group, the shipped mails that waited for them in another.
    def mailer_group(found, error_class):
        return next((g for g in found if g["service"] == "mailer"
                     and g["error_class"] == error_class and g["count"] == ORDERS), None)

    def all_parked():
        found = groups(console)
        poison = {g["service"] for g in found if g["error_class"] == "poison"}
        if poison == set(CONSUMERS) and mailer_group(found, "exhausted") \
                and mailer_group(found, "out-of-order"):
            return found
        return None

    found = eventually(all_parked, timeout=60, message="poison and refused mails parked")
    refused, waiting = mailer_group(found, "exhausted"), mailer_group(found, "out-of-order")
    assert (refused["event_type"], waiting["event_type"]) == ("OrderPaid", "OrderShipped")
    assert all(g["status"] == "parked" for g in found)
    assert mails_in(mail_dir) == []
    assert metric(console.url, "console_dead_letters_parked", service="mailer",
                  error_class="exhausted") == ORDERS
    mail_groups = [refused, waiting]  # the thank-you mails first: the shipped ones follow

    # The mail server accepts again; each mail group is replayed at 5/s, twice.
    smtp.fail_until = 0.0
    duplicates_before = metric(stack.url("mailer"), "messages_duplicates_total")
    for round_ in (1, 2):
        for g in mail_groups:
            started = time.monotonic()
            response = api(console, "POST", f"/api/groups/{g['id']}/replay",
                           json={"rate_per_second": 5, "batch": 1})
            assert response.status_code == 202, response.text
            assert response.json()["count"] == g["count"]
            job = wait_replay(console, response.json()["replay_id"])
            assert (job["status"], job["done"]) == ("finished", g["count"])
            # At 5/s, n messages take at least (n - 1) / 5 s.
            assert time.monotonic() - started >= (g["count"] - 1) / 5
        sent = eventually(lambda: m if len(m := mails_in(mail_dir)) == 2 * ORDERS else None,
                          timeout=30, message=f"every mail sent (round {round_})")
    # The second round reached the mailer, whose inbox took each as a duplicate...
    eventually(lambda: metric(stack.url("mailer"), "messages_duplicates_total")
               >= duplicates_before + 2 * ORDERS, timeout=30, message="second round handled")
    # ...so each mail went out exactly once.
    counts = Counter(m["Message-ID"] for m in mails_in(mail_dir))
    assert len(counts) == 2 * ORDERS and set(counts.values()) == {1}, counts
    assert len(sent) == 2 * ORDERS
    replayed = {g["id"]: g for g in groups(console)}
    for g in mail_groups:
        assert replayed[g["id"]]["status"] == "replayed"
        assert replayed[g["id"]]["last_replayed_at"] is not None
    rows = api(console, "GET", "/api/dead-letters", params={"service": "mailer",
                                                           "error_class": "exhausted"}).json()
    assert len(rows) == ORDERS
    assert {(r["status"], r["replay_count"]) for r in rows} == {("replayed", 2)}
    assert metric(console.url, "console_dead_letters_ingested_total", service="mailer",
                  error_class="exhausted") == ORDERS
    assert metric(console.url, "console_replayed_total", service="mailer") == 2 * 2 * ORDERS

    # Archiving the points poison group takes it off the list.
    points_poison = next(g for g in groups(console)
                         if g["service"] == "points" and g["error_class"] == "poison")
    response = api(console, "POST", f"/api/groups/{points_poison['id']}/archive")
    assert response.json() == {"count": 1}
    assert points_poison["id"] not in {g["id"] for g in groups(console)}
    archived = api(console, "GET", "/api/dead-letters",
                   params={"service": "points", "status": "archived"}).json()
    assert [a["error_class"] for a in archived] == ["poison"]

    # One dead letter in full: headers, body, trace context.
    one = api(console, "GET", f"/api/dead-letters/{archived[0]['id']}").json()
    assert one["body"] == "{not json" and one["headers"]["error-class"] == "poison"

    # Edit & replay is off by default.
    response = api(console, "POST", f"/api/dead-letters/{rows[0]['id']}/edit-and-replay",
                   json={"body": "{}"})
    assert response.status_code == 403

    # The audit trail names the user for each action.
    trail = api(console, "GET", "/api/audit").json()
    actions = [(r["user"], r["action"]) for r in trail]
    assert actions.count((console.user, "replay-group")) == 4
    assert (console.user, "archive-group") in actions
    assert all(r["user"] == console.user for r in trail)


@pytest.mark.parametrize("method,path", [
    ("GET", "/"), ("GET", "/groups"), ("GET", "/dead-letters"), ("GET", "/dead-letters/1"),
    ("GET", "/audit"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/api/dead-letters"),
    ("GET", "/api/dead-letters/1"),
    ("GET", "/api/groups"), ("GET", "/api/audit"), ("GET", "/api/replays/1"),
    ("GET", "/api/alerts"),
    ("POST", "/api/groups/x/replay"), ("POST", "/api/groups/x/archive"),
    ("POST", "/api/dead-letters/1/replay"), ("POST", "/api/dead-letters/1/archive"),
    ("POST", "/api/dead-letters/1/edit-and-replay"), ("POST", "/api/replays/1/stop"),
    ("POST", "/groups/x/replay"), ("POST", "/dead-letters/1/archive"),
])
def test_no_page_or_api_call_answers_without_the_right_credentials(system, method, path):
    console = system[1]
    for auth in (None, (console.user, "wrong password"), ("intruder", console.password)):
        response = httpx.request(method, f"{console.url}{path}", auth=auth, timeout=10)
        assert response.status_code == 401, (auth, response.text)
        assert response.headers["www-authenticate"].startswith("Basic")


def test_the_openapi_document_describes_the_json_api(system):
    console = system[1]
    document = api(console, "GET", "/openapi.json").json()
    assert {"/api/dead-letters", "/api/dead-letters/{dead_letter_id}", "/api/groups",
            "/api/groups/{group_id}/replay", "/api/groups/{group_id}/archive",
            "/api/dead-letters/{dead_letter_id}/replay",
            "/api/dead-letters/{dead_letter_id}/archive",
            "/api/dead-letters/{dead_letter_id}/edit-and-replay", "/api/audit"
            } <= set(document["paths"])
    assert "/groups" not in document["paths"]  # the pages are not API


def test_without_prometheus_url_the_overview_says_alerts_are_not_connected(system):
    console = system[1]
    page = httpx.get(console.url, auth=console.auth, timeout=10)
    assert page.status_code == 200 and "Alerts are not connected" in page.text
    assert api(console, "GET", "/api/alerts").json() == {
        "connected": False, "problem": None, "firing": []}


def test_a_form_post_without_the_pages_csrf_token_is_refused(system):
    console = system[1]
    page = httpx.get(f"{console.url}/groups", auth=console.auth, timeout=10)
    assert page.status_code == 200 and "Groups" in page.text
    for data in ({}, {"csrf_token": "forged"}):
        response = httpx.post(f"{console.url}/groups/x/archive", auth=console.auth, data=data,
                              timeout=10)
        assert response.status_code == 403, response.text
    assert not any(r["action"] == "archive-group" and r["target"] == "group x"
                   for r in api(console, "GET", "/api/audit").json())
