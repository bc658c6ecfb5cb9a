"""The chaos check's counting, as pure logic (the check itself restarts the broker: the lead
runs it). Shipping is in it: killed like every consumer, its outbox counted like payment's,
and mails out of causal order counted."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from devstack import chaos

pytestmark = pytest.mark.unit

ORDERS = {"o1": {"amount": 1200, "refunded": False}, "o2": {"amount": 500, "refunded": True}}
EXPECTED = {
    "p1": {"type": "OrderPaid", "order_id": "o1"},
    "s1": {"type": "OrderShipped", "order_id": "o1"},
    "p2": {"type": "OrderPaid", "order_id": "o2"},
    "r2": {"type": "OrderRefunded", "order_id": "o2"},
    "s2": {"type": "OrderShipped", "order_id": "o2"},
}


def mid(event_id: str) -> str:
    return f"<{event_id}@mini-ec>"


def test_shipping_is_a_consumer_that_is_killed_and_a_producer_whose_outbox_is_counted():
    assert "shipping" in chaos.CONSUMERS
    assert chaos.PRODUCERS == ("payment", "shipping")
    schedule = chaos.fault_schedule(chaos.ChaosConfig(kills_per_consumer=2), random.Random(1))
    assert Counter(what for _, what in schedule)["kill:shipping"] == 2


def test_the_schedule_closes_every_consumers_connections_inside_the_window():
    config = chaos.ChaosConfig(connection_drops_per_consumer=3)
    schedule = chaos.fault_schedule(config, random.Random(7))
    drops = Counter(what for _, what in schedule if what.startswith("drop:"))
    assert drops == {f"drop:{name}": 3 for name in chaos.CONSUMERS}
    assert all(0 < at < config.seconds for at, what in schedule if what.startswith("drop:"))


def test_each_paid_order_wants_one_order_shipped_and_refunds_only_from_payment():
    wanted = chaos.wanted_events(ORDERS)
    assert wanted["shipping"] == Counter({("o1", "OrderShipped"): 1, ("o2", "OrderShipped"): 1})
    assert wanted["payment"] == Counter({("o1", "OrderPaid"): 1, ("o2", "OrderPaid"): 1,
                                         ("o2", "OrderRefunded"): 1})


def test_outbox_counts_name_lost_duplicated_and_unexpected_rows():
    wanted = chaos.wanted_events(ORDERS)["shipping"]
    assert chaos.outbox_counts(wanted, Counter(wanted)).ok
    counts = chaos.outbox_counts(wanted, Counter({("o1", "OrderShipped"): 2,
                                                  ("o9", "OrderShipped"): 1}))
    assert (counts.expected, counts.lost, counts.duplicated, counts.unexpected) == (2, 1, 1, 1)


def test_only_events_a_consumer_handles_are_expected_of_it():
    assert set(chaos.handled_by("points", EXPECTED)) == {"p1", "p2", "r2"}  # shipped: ignored
    assert set(chaos.handled_by("mailer", EXPECTED)) == set(EXPECTED)
    assert set(chaos.handled_by("audit", EXPECTED)) == set(EXPECTED)
    assert set(chaos.handled_by("shipping", EXPECTED)) == {"p1", "p2", "r2"}  # not bound


def test_a_shipped_mail_before_its_thank_you_mail_is_out_of_causal_order():
    in_order = [mid("p1"), mid("p2"), mid("s1"), mid("r2"), mid("s2")]
    assert chaos.mails_out_of_causal_order(in_order, EXPECTED) == 0
    # A resend of the thank-you mail after the shipped one is fine: the first came first.
    assert chaos.mails_out_of_causal_order(in_order + [mid("p1")], EXPECTED) == 0
    assert chaos.mails_out_of_causal_order([mid("s1"), mid("p1"), mid("p2"), mid("s2")],
                                           EXPECTED) == 1
    assert chaos.mails_out_of_causal_order([mid("s1"), mid("s2")], EXPECTED) == 2
    assert chaos.mails_out_of_causal_order([mid("x"), mid("p1"), mid("s1")], EXPECTED) == 0


def test_the_report_fails_on_a_mail_out_of_causal_order_and_shows_the_row():
    report = chaos.Report(config=chaos.ChaosConfig(), seed=1,
                          counts={"shipping (outbox)": chaos.Counts(expected=2)})
    assert report.passed
    report.mails_out_of_order = 1
    assert not report.passed
    table = report.table()
    assert "shipping (outbox)" in table
    assert "mails out of causal order (an order's shipped mail before its thank-you mail): 1" \
        in table
