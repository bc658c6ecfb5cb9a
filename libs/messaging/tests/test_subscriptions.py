"""The inbox's one rule (`decide`) and the subscription registry, as pure logic."""

from __future__ import annotations

import pytest

from contracts import OrderPaid, OrderRefunded, OrderShipped
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


TAKES_PAYMENTS = Subscriptions([Subscription(OrderPaid, grant),
                                Subscription(OrderRefunded, revoke)])


def state(event, seen: bool = False, **progress: int) -> State:
    """What is committed, per stream; `applied` is the event's own stream's."""
    return State(seen=seen, applied=progress.get(event.stream), progress=progress)


def test_decide_ignores_an_event_type_the_service_does_not_take_whatever_its_order():
    refund_only = Subscriptions([Subscription(OrderRefunded, revoke)])
    # #5 with nothing applied would be out of order, and seen would be a duplicate: the
    # service does not take the type, so neither question is asked.
    assert decide(at(5), state(at(5)), refund_only) is Outcome.IGNORED
    assert decide(at(1), state(at(1), True, payment=1), refund_only) is Outcome.IGNORED


class _Caused(OrderPaid):
    """An event of another producer's stream, caused by payment #1 (as OrderShipped is)."""

    stream = "other"
    after = (("payment", 1),)


def caused(sequence: int = 1) -> _Caused:
    return _Caused(**at(sequence).model_dump())


def test_decide_counts_each_stream_on_its_own():
    # Payment's #1 and #2 are applied; the other stream's #1 is the next in ITS stream.
    one, two, three = caused(1), caused(2), caused(3)
    assert decide(one, state(one, payment=2), TAKES_PAYMENTS) is None
    assert decide(two, state(two, payment=2, other=1), TAKES_PAYMENTS) is None
    assert decide(one, state(one, payment=2, other=1), TAKES_PAYMENTS) is Outcome.STALE
    with pytest.raises(OutOfOrder, match="waits for #2 of other"):
        decide(three, state(three, payment=1, other=1), TAKES_PAYMENTS)
    # And the other stream never holds payment's events back.
    assert decide(at(2), state(at(2), payment=1, other=0), TAKES_PAYMENTS) is None


def test_decide_makes_an_event_wait_for_its_cause_in_a_stream_the_service_takes():
    one = caused(1)
    with pytest.raises(OutOfOrder, match="waits for #1 of payment"):
        decide(one, state(one), TAKES_PAYMENTS)
    # Applied once the cause is, whatever came after the cause in its stream.
    assert decide(one, state(one, payment=1), TAKES_PAYMENTS) is None
    assert decide(one, state(one, payment=2), TAKES_PAYMENTS) is None


def test_decide_does_not_wait_for_a_cause_the_service_never_receives():
    # A service that takes no event of the payment stream: nothing there to wait for.
    shipped_only = Subscriptions([Subscription(OrderShipped, grant)])
    shipped = events.order_shipped(at(1))
    assert decide(shipped, state(shipped), shipped_only) is None


def test_the_contracts_order_shipped_waits_for_order_paid_not_for_the_refund():
    mails = Subscriptions([Subscription(OrderPaid, grant), Subscription(OrderRefunded, grant),
                           Subscription(OrderShipped, grant)])
    shipped = events.order_shipped(at(1))
    with pytest.raises(OutOfOrder, match="OrderShipped #1 .* waits for #1 of payment"):
        decide(shipped, state(shipped), mails)
    assert decide(shipped, state(shipped, payment=1), mails) is None  # paid, not refunded
    assert decide(shipped, state(shipped, payment=2), mails) is None  # paid and refunded
    # The refund does not wait for the shipment either: either order works.
    refunded = events.order_refunded(at(1))
    assert decide(refunded, state(refunded, payment=1), mails) is None
    assert decide(refunded, state(refunded, payment=1, shipment=1), mails) is None
    # Points takes no OrderShipped: ignored whatever is applied.
    assert decide(shipped, state(shipped), TAKES_PAYMENTS) is Outcome.IGNORED


def test_a_late_duplicate_of_a_caused_event_is_stale_before_its_cause_is_asked_about():
    one = caused(1)
    assert decide(one, state(one, other=1), TAKES_PAYMENTS) is Outcome.STALE


def test_the_registry_gives_each_event_type_its_handler_and_step():
    registry = Subscriptions([Subscription(OrderPaid, grant, before=send),
                              Subscription(OrderRefunded, revoke)])
    paid = events.order_paid()
    refunded = events.order_refunded(paid)
    assert (registry.handler_for(paid), registry.before_for(paid)) == (grant, send)
    assert (registry.handler_for(refunded), registry.before_for(refunded)) == (revoke, None)
    assert registry.event_types == ("OrderPaid", "OrderRefunded")
    assert registry.streams == {"payment"}


def test_an_event_type_nobody_subscribed_to_has_no_handler():
    registry = Subscriptions([Subscription(OrderPaid, grant)])
    refunded = events.order_refunded(events.order_paid())
    assert registry.handler_for(refunded) is None and registry.before_for(refunded) is None


def test_two_subscriptions_for_one_event_type_are_refused():
    with pytest.raises(ValueError, match="two subscriptions for OrderPaid"):
        Subscriptions([Subscription(OrderPaid, grant), Subscription(OrderPaid, revoke)])


def test_a_subscription_to_a_class_outside_the_contract_is_refused():
    class OrderCancelled(OrderPaid):
        pass

    with pytest.raises(ValueError, match="not an event type of the contract"):
        Subscription(OrderCancelled, grant)


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


def test_an_event_whose_own_copy_took_its_place_between_the_reads_is_a_duplicate():
    """Two copies at once on PostgreSQL: this one read "not seen", then the other committed,
    then this one read the progress and the place: held by this very event id."""
    paid = at(1)
    assert decide(paid, State(seen=False, applied=1, holder=str(paid.event_id))) is (
        Outcome.DUPLICATE)
