"""deploy/rabbitmq/definitions.json: exactly DESIGN's names, the arguments the services declare,
least-privilege permissions, and no password in git."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

from messaging import spec
from messaging.topology import EXCHANGE, QueueTopology

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = json.loads((ROOT / "deploy/rabbitmq/definitions.json").read_text(encoding="utf-8"))
# The definitions are checked against the specs: every consuming service's queues and user.
CONSUMERS = tuple(s.name for s in spec.consumers())
PRODUCERS = tuple(s.name for s in spec.installed() if s.consumes is None)
# The failed-message console (apps/console): reads the DLQs, replays through its own exchange.
CONSOLE, CONSOLE_EXCHANGE = "console", "console.replay"


def _queues() -> dict[str, dict]:
    return {q["name"]: q for q in DEFINITIONS["queues"]}


def _permission(user: str) -> dict[str, re.Pattern]:
    (entry,) = [p for p in DEFINITIONS["permissions"] if p["user"] == user]
    return {kind: re.compile(entry[kind]) for kind in ("configure", "write", "read")}


def _allowed(user: str, kind: str, resource: str) -> bool:
    # RabbitMQ matches permission patterns with re:run, i.e. a search, like re.search.
    return _permission(user)[kind].search(resource) is not None


def test_names_are_exactly_the_designed_ones():
    assert [v["name"] for v in DEFINITIONS["vhosts"]] == ["shop"]
    # shop.events, and each consuming service's own exchange for its copies (retry, DLQ).
    assert [(e["name"], e["type"], e["durable"]) for e in DEFINITIONS["exchanges"]] == [
        ("shop.events", "topic", True),
        *((QueueTopology.for_service(s).exchange, "direct", True) for s in CONSUMERS),
        (CONSOLE_EXCHANGE, "direct", True),
    ]
    expected = set()
    for service in CONSUMERS:
        q = f"{service}.events"
        expected |= {q, f"{q}.dlq", f"{q}.retry.1s", f"{q}.retry.5s", f"{q}.retry.30s"}
    assert set(_queues()) == expected
    assert all(q["durable"] and not q["auto_delete"] for q in DEFINITIONS["queues"])
    assert {u["name"] for u in DEFINITIONS["users"]} == {"admin", *PRODUCERS, *CONSUMERS,
                                                        CONSOLE}
    assert [u["tags"] for u in DEFINITIONS["users"] if u["name"] == "admin"] == [["administrator"]]
    assert all(u["tags"] == [] for u in DEFINITIONS["users"] if u["name"] != "admin")


def test_bindings_follow_the_design():
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in DEFINITIONS["bindings"]}
    from_shop_events = {
        ("shop.events", s.consumes.queue, key) for s in spec.consumers() if s.consumes
        for key in s.consumes.bindings
    }
    # A service's own exchange reaches each of its queues, by the queue's name, and no other.
    own = {
        (topology.exchange, queue, queue)
        for topology in map(QueueTopology.for_service, CONSUMERS)
        for _, queue in topology.queues()
    }
    # The console's exchange reaches each work queue (where a replay goes), by its name.
    replays = {(CONSOLE_EXCHANGE, s.consumes.queue, s.consumes.queue)
               for s in spec.consumers() if s.consumes}
    assert bindings == from_shop_events | own | replays


@pytest.mark.parametrize("service", CONSUMERS)
def test_queue_arguments_are_the_ones_the_service_declares(service):
    """The broker refuses a re-declaration with other arguments: these must match the library."""
    topology = QueueTopology.for_service(service)
    queues = _queues()
    assert queues[topology.name]["arguments"] == topology.work_arguments()
    assert queues[topology.dlq]["arguments"] == topology.dlq_arguments()
    for delay in topology.retry_delays:
        assert queues[topology.retry_queue(delay)]["arguments"] == topology.retry_arguments(delay)
    assert topology.name == f"{service}.events" and EXCHANGE == "shop.events"


def test_the_work_queues_are_quorum_queues_with_a_delivery_limit_and_a_dlq():
    for service in CONSUMERS:
        args = _queues()[f"{service}.events"]["arguments"]
        assert args["x-queue-type"] == "quorum"
        assert args["x-delivery-limit"] == 5
        assert (args["x-dead-letter-exchange"], args["x-dead-letter-routing-key"]) == (
            f"{service}.events.copies",
            f"{service}.events.dlq",
        )
        assert args["x-dead-letter-strategy"] == "at-least-once"
        assert args["x-overflow"] == "reject-publish"


def test_payment_may_only_publish_to_shop_events():
    assert _allowed("payment", "write", "shop.events")
    assert not _allowed("payment", "write", "amq.default")
    assert not _allowed("payment", "write", "shop.events.x")
    for queue in _queues():
        assert not _allowed("payment", "read", queue)
        assert not _allowed("payment", "configure", queue)


@pytest.mark.parametrize("service", CONSUMERS)
def test_a_consumer_may_only_touch_its_own_queues(service):
    own = {name for name in _queues() if name.startswith(f"{service}.events")}
    others = set(_queues()) - own
    for queue in own:
        for kind in ("configure", "write", "read"):
            assert _allowed(service, kind, queue), (kind, queue)
    for queue in others:
        for kind in ("configure", "write", "read"):
            assert not _allowed(service, kind, queue), (kind, queue)
    # Only a consumer that publishes (its spec produces events: shipping) writes to the
    # exchange; none may configure it.
    assert _allowed(service, "write", "shop.events") is bool(spec.named(service).produces)
    assert not _allowed(service, "write", "shop.events.x")
    assert not _allowed(service, "configure", "shop.events")
    assert _allowed(service, "read", "shop.events")  # to bind its queue
    # Its copies go through its own exchange; the default one would reach any queue by name.
    assert _allowed(service, "write", f"{service}.events.copies")
    assert not _allowed(service, "write", "amq.default")
    assert not _allowed(service, "configure", f"{service}.eventsX")


def test_the_console_reads_only_the_dlqs_and_writes_only_its_own_exchange():
    for name in _queues():
        assert _allowed(CONSOLE, "read", name) is name.endswith(".dlq"), name
        assert not _allowed(CONSOLE, "write", name), name
        assert not _allowed(CONSOLE, "configure", name), name
    assert _allowed(CONSOLE, "write", CONSOLE_EXCHANGE)
    for exchange in ("amq.default", "shop.events", *(QueueTopology.for_service(s).exchange
                                                     for s in CONSUMERS)):
        assert not _allowed(CONSOLE, "write", exchange), exchange
    assert not _allowed(CONSOLE, "configure", CONSOLE_EXCHANGE)


def test_no_password_is_committed():
    for user in DEFINITIONS["users"]:
        assert "password" not in user and "password_hash" not in user


def test_render_hashes_the_passwords_the_way_rabbitmq_does(apply_definitions):
    passwords = {user: f"{user}-secret" for user in apply_definitions.user_names(DEFINITIONS)}
    rendered = apply_definitions.render(DEFINITIONS, passwords, vhost="v1", user_prefix="t-")

    for user in rendered["users"]:
        raw = base64.b64decode(user["password_hash"])
        salt, digest = raw[:4], raw[4:]
        plain = passwords[user["name"].removeprefix("t-")]
        assert digest == hashlib.sha256(salt + plain.encode()).digest()
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert user["name"].startswith("t-")
    assert rendered["vhosts"] == [{"name": "v1"}]
    for section in ("permissions", "exchanges", "queues", "bindings"):
        assert {item["vhost"] for item in rendered[section]} == {"v1"}
    assert {p["user"] for p in rendered["permissions"]} == {u["name"] for u in rendered["users"]}
    assert DEFINITIONS["vhosts"] == [{"name": "shop"}]  # the template is left alone


def test_render_refuses_a_missing_password(apply_definitions, monkeypatch, tmp_path):
    for user in apply_definitions.user_names(DEFINITIONS):
        monkeypatch.setenv(apply_definitions.password_env_var(user), "x")
    monkeypatch.delenv("RABBITMQ_AUDIT_PASSWORD")
    with pytest.raises(SystemExit, match="RABBITMQ_AUDIT_PASSWORD"):
        apply_definitions.main(["--render", str(tmp_path / "d.json")])
    assert not (tmp_path / "d.json").exists()

    monkeypatch.setenv("RABBITMQ_AUDIT_PASSWORD", "x")
    assert apply_definitions.main(["--render", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["vhosts"] == [{"name": "shop"}]
