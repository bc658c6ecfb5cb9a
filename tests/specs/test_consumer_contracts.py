"""Consumer-driven contracts (issue 26): each consumer's spec declares what it reads of each
event type and version (messaging.spec.Reads); the producers' schema, as the generated
AsyncAPI document has it, must not break any of them. docs/evolution.md."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

import contracts
from contracts import EVENT_TYPES, OrderPaid, PaymentDataV2
from devstack import asyncapi
from devstack.contract_check import problems, published
from messaging import spec

pytestmark = pytest.mark.unit


def test_what_the_producers_publish_breaks_no_declared_reader():
    assert problems(asyncapi.build()) == []


def test_every_published_version_of_each_event_is_in_the_document():
    assert set(published(asyncapi.build())) == {
        ("OrderPaid", 1), ("OrderPaid", 2), ("OrderRefunded", 1), ("OrderShipped", 1)}


def test_every_consumer_declares_what_it_reads_of_everything_routed_to_it():
    for consumer in spec.consumers():
        assert {r.event_type for r in consumer.reads} >= {
            s.event_type for s in consumer.consumes.subscriptions(consumer.settings())}
        assert {r.event_type for r in consumer.reads} == {
            t for t in EVENT_TYPES if consumer.consumes.receives(t)}, consumer.name


def test_removing_a_field_someone_reads_fails_naming_the_reader():
    document = asyncapi.build()
    del document["components"]["schemas"]["Money"]["properties"]["value"]
    found = problems(document)
    assert any(p.startswith("points reads data.amount.value (integer) of OrderPaid version 2")
               and "has no data.amount.value" in p for p in found), found
    assert any(p.startswith("mailer reads data.amount.value") for p in found), found


def test_making_a_field_someone_reads_optional_fails():
    document = asyncapi.build()
    document["components"]["schemas"]["ShipmentData"]["required"].remove("tracking_number")
    assert problems(document) == [
        "mailer reads data.tracking_number (string) of OrderShipped version 1, but the "
        "published schema makes data.tracking_number optional"]


def test_retyping_a_field_someone_reads_fails():
    document = asyncapi.build()
    document["components"]["schemas"]["PaymentData"]["properties"]["amount"] = {
        "type": "string"}
    found = problems(document)
    assert ("points reads data.amount (integer) of OrderPaid version 1, but the published "
            "schema types data.amount as string") in found


def test_a_field_nobody_reads_may_go():
    document = asyncapi.build()
    del document["components"]["schemas"]["PaymentDataV2"]["properties"]["payment_id"]
    document["components"]["schemas"]["PaymentDataV2"]["required"].remove("payment_id")
    assert problems(document) == []


class OrderPaidV3(OrderPaid):
    """A breaking version 3 (the email dropped), as someone might add it."""

    version: Literal[3] = 3  # type: ignore[assignment]
    data: PaymentDataV2


@pytest.fixture
def payment_publishes_version_3(monkeypatch):
    """payment's spec says it can publish OrderPaid version 3, which the contracts know."""
    monkeypatch.setitem(contracts.VERSIONS, "OrderPaid", {**contracts.VERSIONS["OrderPaid"],
                                                          3: OrderPaidV3})
    specs = tuple(dataclasses.replace(s, versions={"OrderPaid": (1, 2, 3)})
                  if s.name == "payment" else s for s in spec.installed())
    monkeypatch.setattr(spec, "installed", lambda: specs)


def test_publishing_a_version_nobody_reads_yet_fails(payment_publishes_version_3):
    found = problems(asyncapi.build())
    for reader in ("points", "mailer", "audit", "shipping"):
        assert (f"OrderPaid version 3 is published, and {reader} (which receives it) "
                "does not read it") in found


def test_a_breaking_version_without_an_upcaster_fails(payment_publishes_version_3):
    """Every consumer declares it reads version 3, but no upcaster takes version 3 to the
    shape their handlers are written for: the check fails before anything is deployed."""
    readers = tuple(dataclasses.replace(c, reads=(*c.reads, spec.Reads("OrderPaid", 3)))
                    for c in spec.consumers())
    found = problems(asyncapi.build(), readers)
    assert ("points reads OrderPaid version 3, but nothing upcasts OrderPaidV3 to OrderPaid"
            in found), found
    assert not any("is published" in p for p in found)
