"""Issue 26: a tolerant reader for additive change, OrderPaid version 2 and its upcaster."""

import json
import uuid

import pytest

from contracts import (
    EVENT_TYPES,
    VERSIONS,
    Money,
    OrderPaid,
    OrderPaidV1,
    PaymentData,
    PoisonMessage,
    parse_event,
    read_event,
    upcast,
    version_of,
)
from contracts.upcasting import UPCASTERS, order_paid_v1_to_v2

pytestmark = pytest.mark.unit

PAYMENT_ID, ORDER_ID, EVENT_ID = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def envelope(version: int = 1, **extra: object) -> dict:
    data: dict = {"payment_id": str(PAYMENT_ID), "customer_id": "alice",
                  "email": "alice@example.com"}
    data |= ({"amount": 1200, "currency": "JPY"} if version == 1
             else {"amount": {"value": 1200, "currency": "JPY"}})
    return {"event_id": str(EVENT_ID), "event_type": "OrderPaid", "version": version,
            "occurred_at": "2026-11-29T12:00:00Z", "correlation_id": "c0ffee",
            "order_id": str(ORDER_ID), "sequence": 1, "data": data, **extra}


def encode(body: dict) -> bytes:
    return json.dumps(body).encode()


# The tolerant reader.

@pytest.mark.parametrize("version", [1, 2])
def test_fields_a_reader_does_not_know_are_accepted_and_kept_untouched(version):
    body = envelope(version, channel={"kind": "web", "tags": [1, "two", None]})
    body["data"]["payment_method"] = "card"
    event = parse_event(encode(body))
    assert event.model_extra == {"channel": {"kind": "web", "tags": [1, "two", None]}}
    assert event.data.model_extra == {"payment_method": "card"}
    # What the event is stored or forwarded as keeps them, as they came.
    again = json.loads(event.to_json())
    assert again["channel"] == {"kind": "web", "tags": [1, "two", None]}
    assert again["data"]["payment_method"] == "card"
    assert parse_event(event.to_json()) == event


def test_a_field_unknown_only_deep_inside_is_kept_when_the_event_is_written_again():
    body = envelope(2)
    body["data"]["amount"]["precision"] = 0
    event = parse_event(encode(body))
    assert json.loads(event.to_json())["data"]["amount"] == {
        "value": 1200, "currency": "JPY", "precision": 0}
    assert json.loads(parse_event(encode(envelope(2))).to_json()) == envelope(2)


@pytest.mark.parametrize(("field", "value"), [("amount", "1200"), ("customer_id", 42),
                                             ("email", None)])
def test_a_known_field_of_the_wrong_type_is_poison_even_among_unknown_ones(field, value):
    body = envelope(1, channel="web")
    body["data"] |= {field: value, "payment_method": "card"}
    with pytest.raises(PoisonMessage, match=f"data.{field}"):
        parse_event(encode(body))


def test_an_unknown_type_is_poison_whatever_else_it_carries():
    with pytest.raises(PoisonMessage, match="unknown event_type 'OrderCancelled'"):
        parse_event(encode(envelope(1, event_type="OrderCancelled")))


def test_events_built_in_code_stay_strict():
    """Only reading is tolerant: a producer cannot add a field by a typo."""
    with pytest.raises(ValueError, match="payment_method"):
        PaymentData(payment_id=PAYMENT_ID, customer_id="alice", email="a@example.com",
                    amount=1, currency="JPY", payment_method="card")


# Version 2 and the upcaster.

def test_a_version_2_body_parses_as_it_is():
    event = parse_event(encode(envelope(2)))
    assert isinstance(event, OrderPaid) and event.version == 2
    assert event.data.amount == Money(value=1200, currency="JPY")


def test_version_2_money_without_its_currency_is_poison():
    body = envelope(2)
    del body["data"]["amount"]["currency"]
    with pytest.raises(PoisonMessage, match="data.amount.currency"):
        parse_event(encode(body))


def test_read_event_gives_the_version_as_published():
    assert isinstance(read_event(encode(envelope(1))), OrderPaidV1)


def test_the_v1_to_v2_upcaster_puts_amount_and_currency_together_and_changes_nothing_else():
    v1 = OrderPaidV1.model_validate(envelope(1))
    v2 = order_paid_v1_to_v2(v1)
    assert v2 == OrderPaid.model_validate(envelope(2))
    assert (v2.event_id, v2.order_id, v2.sequence, v2.occurred_at, v2.correlation_id) == (
        v1.event_id, v1.order_id, v1.sequence, v1.occurred_at, v1.correlation_id)


def test_the_upcaster_carries_unknown_fields_along():
    body = envelope(1, channel="web")
    body["data"]["payment_method"] = "card"
    v2 = order_paid_v1_to_v2(read_event(encode(body)))  # type: ignore[arg-type]
    assert v2.model_extra == {"channel": "web"}
    assert v2.data.model_extra == {"payment_method": "card"}


def test_upcasting_a_current_event_returns_it_unchanged():
    event = OrderPaid.model_validate(envelope(2))
    assert upcast(event) is event


@pytest.mark.parametrize(("event_type", "version"),
                         [(t, v) for t, versions in VERSIONS.items() for v in versions])
def test_every_older_version_has_an_upcaster_and_the_current_one_is_the_newest(event_type,
                                                                              version):
    model, current = VERSIONS[event_type][version], EVENT_TYPES[event_type]
    assert version_of(model) == version
    assert version_of(current) == max(VERSIONS[event_type])
    assert (model in UPCASTERS) == (model is not current)
