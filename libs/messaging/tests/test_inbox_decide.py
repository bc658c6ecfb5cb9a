"""The one rule of the inbox, `decide(event, state)`, without a database (issue 17: conflicts
are never skipped as stale, an event id with other content is a clash, not a duplicate)."""

import pytest

from devstack import events
from messaging.inbox import Conflict, Outcome, OutOfOrder, State, decide, digest

pytestmark = pytest.mark.unit

PAID = events.order_paid()
REFUNDED = events.order_refunded(PAID)


def test_a_new_order_s_first_event_is_applied():
    assert decide(PAID, State(seen=False)) is None


def test_the_next_event_of_an_order_is_applied():
    assert decide(REFUNDED, State(seen=False, applied=1)) is None


def test_an_event_seen_with_the_same_content_is_a_duplicate():
    assert decide(PAID, State(seen=True, seen_digest=digest(PAID))) is Outcome.DUPLICATE


def test_an_event_seen_before_digests_were_recorded_is_a_duplicate():
    assert decide(PAID, State(seen=True, seen_digest=None)) is Outcome.DUPLICATE


def test_an_event_id_seen_with_other_content_is_a_clash():
    forged = PAID.model_copy(update={"sequence": 2})
    assert decide(forged, State(seen=True, seen_digest=digest(PAID))) is Outcome.CLASH


def test_another_event_at_an_applied_place_is_a_conflict_naming_the_holder():
    rival = events.order_paid(order_id=PAID.order_id)
    with pytest.raises(Conflict, match=str(PAID.event_id)):
        decide(rival, State(seen=False, applied=1, holder=str(PAID.event_id)))


def test_an_event_at_an_applied_place_nobody_remembers_is_stale():
    assert decide(PAID, State(seen=False, applied=2, holder=None)) is Outcome.STALE


def test_an_event_ahead_of_its_predecessor_waits():
    with pytest.raises(OutOfOrder):
        decide(REFUNDED, State(seen=False, applied=None))


def test_the_digest_is_the_same_for_a_copy_and_differs_for_other_content():
    copy = PAID.model_copy()
    other = PAID.model_copy(update={"correlation_id": "other"})
    assert digest(copy) == digest(PAID) != digest(other)
