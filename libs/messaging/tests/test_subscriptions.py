"""The inbox's one rule (`decide`) and the subscription registry, as pure logic."""

from __future__ import annotations

import pytest

from contracts import OrderPaid, OrderRefunded
from devstack import events
from messaging.inbox import Outcome, OutOfOrder, State, decide
from messaging.spec import Consumes, Subscription, Subscriptions

pytestmark = pytest.mark.unit


def at(sequence: int):
    return events.order_paid().model_copy(update={"sequence": sequence})


@pytest.mark.parametrize(("sequence", "seen", "applied", "expected"), [
    (1, False, None, None),  # the order's first event: apply
    (2, False, 1, None),  # the next one: apply
    (1, True, None, Outcome.DUPLICATE),  # this event id was applied before
    (2, True, 1, Outcome.DUPLICATE),
    (1, False, 1, Outcome.STALE),  # at the applied sequence, no event remembered there
    (1, False, 2, Outcome.STALE),  # below it (a held place is a Conflict: test_inbox_decide)
])
def test_decide_applies_the_next_event_and_skips_what_is_done(sequence, seen, applied,
                                                               expected):
    assert decide(at(sequence), State(seen=seen, applied=applied)) is expected


@pytest.mark.parametrize(("sequence", "applied"), [(2, None), (3, 1)])
def test_decide_makes_an_event_wait_for_its_predecessor(sequence, applied):
    with pytest.raises(OutOfOrder, match=f"waits for #{(applied or 0) + 1}"):
        decide(at(sequence), State(seen=False, applied=applied))


async def grant(event, session):
    return None


async def revoke(event, session):
    return None


async def send(event):
    return None


def test_the_registry_gives_each_event_type_its_handler_and_step():
    registry = Subscriptions([Subscription(OrderPaid, grant, before=send),
                              Subscription(OrderRefunded, revoke)])
    paid = events.order_paid()
    refunded = events.order_refunded(paid)
    assert (registry.handler_for(paid), registry.before_for(paid)) == (grant, send)
    assert (registry.handler_for(refunded), registry.before_for(refunded)) == (revoke, None)
    assert registry.event_types == ("OrderPaid", "OrderRefunded")


def test_an_event_type_nobody_subscribed_to_has_no_handler():
    registry = Subscriptions([Subscription(OrderPaid, grant)])
    refunded = events.order_refunded(events.order_paid())
    assert registry.handler_for(refunded) is None and registry.before_for(refunded) is None


def test_two_subscriptions_for_one_event_type_are_refused():
    with pytest.raises(ValueError, match="two subscriptions for OrderPaid"):
        Subscriptions([Subscription(OrderPaid, grant), Subscription(OrderPaid, revoke)])


def test_a_subscription_to_a_class_outside_the_contract_is_refused():
    class OrderShipped(OrderPaid):
        pass

    with pytest.raises(ValueError, match="not an event type of the contract"):
        Subscription(OrderShipped, grant)


@pytest.mark.parametrize(("bindings", "event_type", "routed"), [
    (("order.*",), "OrderPaid", True),
    (("order.paid",), "OrderRefunded", False),
    (("#",), "OrderRefunded", True),
    (("order.#",), "OrderPaid", True),
    (("*.paid",), "OrderRefunded", False),
])
def test_bindings_route_event_types_as_the_topic_exchange_does(bindings, event_type, routed):
    consumes = Consumes(queue="q", bindings=bindings, subscriptions=lambda _s: [])
    assert consumes.receives(event_type) is routed
