import json
import uuid
from datetime import UTC, datetime

import pytest

from contracts import (
    MAX_BODY_BYTES,
    OrderPaid,
    OrderRefunded,
    OrderShipped,
    PoisonMessage,
    parse_event,
    routing_key_for,
)

pytestmark = pytest.mark.unit


def envelope(**overrides) -> dict:
    body = {
        "event_id": str(uuid.uuid4()),
        "event_type": "OrderPaid",
        "version": 1,
        "occurred_at": "2026-11-29T12:00:00Z",
        "correlation_id": "c0ffee",
        "order_id": str(uuid.uuid4()),
        "sequence": 1,
        "data": {"payment_id": str(uuid.uuid4()), "customer_id": "alice",
                 "email": "alice@example.com", "amount": 1200, "currency": "JPY"},
    }
    body.update(overrides)
    return body


def encode(body: object) -> bytes:
    return json.dumps(body).encode()


def test_a_valid_order_paid_envelope_parses_into_its_typed_event():
    event = parse_event(encode(envelope()))
    assert isinstance(event, OrderPaid)
    assert event.data.amount == 1200
    assert event.occurred_at == datetime(2026, 11, 29, 12, tzinfo=UTC)


def test_order_refunded_parses_into_its_own_type():
    assert isinstance(parse_event(encode(envelope(event_type="OrderRefunded", sequence=2))),
                      OrderRefunded)


def test_order_shipped_parses_with_its_shipment_data():
    shipment = {"shipment_id": str(uuid.uuid4()), "customer_id": "alice",
                "email": "alice@example.com", "carrier": "Mini Post",
                "tracking_number": "MP123456789"}
    event = parse_event(encode(envelope(event_type="OrderShipped", data=shipment)))
    assert isinstance(event, OrderShipped)
    assert event.data.tracking_number == "MP123456789"
    assert event.routing_key == "order.shipped"


def test_order_shipped_with_payment_data_is_poison():
    with pytest.raises(PoisonMessage, match="OrderShipped does not match the contract"):
        parse_event(encode(envelope(event_type="OrderShipped")))


def test_each_event_type_names_its_stream_and_what_causes_it():
    """The ordering part of the contract (docs/ordering.md): payment's events are one
    stream; OrderShipped is shipping's, caused by payment's #1 (OrderPaid)."""
    assert (OrderPaid.stream, OrderRefunded.stream, OrderShipped.stream) == (
        "payment", "payment", "shipment")
    assert OrderPaid.after == OrderRefunded.after == ()
    assert OrderShipped.after == (("payment", 1),)


def test_an_event_survives_a_round_trip_through_json():
    event = parse_event(encode(envelope()))
    assert parse_event(event.to_json()) == event


@pytest.mark.parametrize(
    ("event_type", "key"), [("OrderPaid", "order.paid"), ("OrderRefunded", "order.refunded"),
                            ("OrderShipped", "order.shipped")]
)
def test_routing_key_is_the_event_type_in_dotted_lower_case(event_type, key):
    assert routing_key_for(event_type) == key


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (encode(envelope(event_type="OrderCancelled")), "unknown event_type 'OrderCancelled'"),
        (encode(envelope(version=2)), "unknown version 2"),
        (encode(envelope(surprise="field")), "surprise"),
        (encode(envelope(sequence=0)), "sequence"),
        (encode(envelope(occurred_at="2026-11-29T12:00:00")), "time zone"),
        (encode({k: v for k, v in envelope().items() if k != "order_id"}), "order_id"),
        (b" " * (MAX_BODY_BYTES + 1), "larger than"),
    ],
    ids=["not-json", "not-utf8", "not-an-object", "unknown-type", "unknown-version",
         "unknown-field", "bad-sequence", "naive-time", "missing-field", "oversized"],
)
def test_a_body_that_is_not_the_contract_is_poison_and_says_why(body, reason):
    with pytest.raises(PoisonMessage, match=reason):
        parse_event(body)


@pytest.mark.parametrize(
    ("field", "value"),
    [("amount", 0), ("amount", 10_000_001), ("amount", "1200"), ("currency", "XYZ"),
     ("customer_id", "has space"), ("customer_id", "x" * 65), ("email", "not-an-address")],
)
def test_data_outside_the_contract_is_poison_naming_the_field(field, value):
    body = envelope()
    body["data"][field] = value
    with pytest.raises(PoisonMessage, match=f"data.{field}"):
        parse_event(encode(body))


# Issue 17, findings 2 and 9: what the envelope itself rules out, at parse time (poison).

@pytest.mark.parametrize(
    ("changes", "says"),
    [({"occurred_at": "9999-12-31T23:59:59-23:59"}, "occurred_at is out of range"),
     ({"occurred_at": "0001-01-01T00:00:00+23:59"}, "occurred_at is out of range"),
     ({"correlation_id": "abc\r\nX-Injected: 1"}, "correlation_id"),
     ({"correlation_id": "abc\n"}, "correlation_id"),
     ({"correlation_id": "tab\there"}, "correlation_id"),
     ({"event_type": "OrderRefunded", "sequence": 1}, "sequence")],
)
def test_an_envelope_no_retry_can_fix_is_poison_at_once(changes, says):
    with pytest.raises(PoisonMessage, match=says):
        parse_event(encode(envelope(**changes)))


# Issue 27, finding 4: an instant the contract accepted and the mailer could not render.

@pytest.mark.parametrize("occurred_at", [
    "9999-12-31T23:59:59.999999Z", "2100-01-01T00:00:00Z", "2100-01-01T09:00:00+09:00",
    "1999-12-31T23:59:59.999999Z", "2000-01-01T08:59:59+09:00", "0001-01-01T00:00:00Z",
])
def test_an_occurred_at_outside_the_window_is_poison_naming_the_window(occurred_at):
    with pytest.raises(PoisonMessage, match="occurred_at is outside the contract's window"):
        parse_event(encode(envelope(occurred_at=occurred_at)))


@pytest.mark.parametrize("occurred_at", [
    "2000-01-01T00:00:00Z", "2000-01-01T09:00:00+09:00", "2099-12-31T23:59:59.999999Z",
])
def test_the_window_s_edges_inside_it_are_accepted(occurred_at):
    event = parse_event(encode(envelope(occurred_at=occurred_at)))
    assert event.occurred_at == datetime.fromisoformat(occurred_at)


def test_a_whole_number_written_as_a_float_is_the_same_amount():
    body = envelope()
    body["data"]["amount"] = 1200.0
    assert parse_event(encode(body)).data.amount == 1200
