"""How a delivery is settled, `settle(result, headers, ...)`, without a broker: one row of
the table in messaging/settlement.py per test. The same decisions carried out by the
consumer are in test_consumer_decisions.py (fake broker) and failure/ (RabbitMQ)."""

import pytest

from contracts import PoisonMessage
from devstack import events
from messaging import headers as h
from messaging.inbox import Conflict, Outcome, OutOfOrder
from messaging.settlement import (
    Ack,
    DeadLetter,
    Defer,
    PermanentError,
    Requeue,
    Retry,
    settle,
    transient,
)

pytestmark = pytest.mark.unit

DELAYS = (1, 5, 30)
PAID = events.order_paid()


def settled(result, headers=None, *, max_deferrals=10, spend=True):
    return settle(result, headers, retry_delays=DELAYS, max_deferrals=max_deferrals,
                  spend=spend)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_of_the_handler_is_acked(outcome):
    assert settled(outcome) == Ack(outcome)


def test_a_poison_body_is_dead_lettered_at_once_with_its_own_headers():
    poison = PoisonMessage("not JSON")
    assert settled(poison, {h.ATTEMPT: 2}) == DeadLetter("poison", poison)


def test_poison_headers_are_dead_lettered_with_ours_only():
    poison = PoisonMessage("unexpected header 'evil'")
    assert settled(poison, {"evil": "x"}) == DeadLetter("poison", poison, keep_headers=False)


def test_the_broker_s_own_headers_do_not_make_the_copy_drop_the_message_s_headers():
    poison = PoisonMessage("not JSON")
    assert settled(poison, {"x-death": [{"count": 1}]}).keep_headers


def test_a_conflict_is_dead_lettered_at_once_whatever_its_budget():
    conflict = Conflict(PAID, holder="another event")
    assert settled(conflict, {h.ATTEMPT: 0}) == DeadLetter("conflict", conflict)


def test_a_permanent_error_is_dead_lettered_at_once_whatever_its_budget():
    error = PermanentError("550 no such mailbox")
    assert settled(error) == DeadLetter("permanent", error)


@pytest.mark.parametrize(("headers", "delay", "attempt"), [
    (None, 1, 1), ({h.ATTEMPT: 1}, 5, 2), ({h.ATTEMPT: 2}, 30, 3),
])
def test_a_transient_error_waits_the_delay_of_its_attempt_and_counts_it(headers, delay, attempt):
    error = ConnectionError("smtp down")
    assert settled(error, headers) == Retry(delay, attempt, error)


def test_a_transient_error_past_the_last_delay_is_dead_lettered_as_exhausted():
    error = TimeoutError("slow")
    assert settled(error, {h.ATTEMPT: 3}) == DeadLetter("exhausted", error, attempts=4)


def test_a_transient_error_the_kill_switch_takes_for_an_outage_goes_back_unspent():
    error = ConnectionError("smtp down")
    assert settled(error, {h.ATTEMPT: 1}, spend=False) == Requeue(error)


def test_an_exhausted_message_failing_during_an_outage_goes_back_rather_than_to_the_dlq():
    error = ConnectionError("smtp down")
    assert settled(error, {h.ATTEMPT: 3}, spend=False) == Requeue(error)


def test_the_kill_switch_verdict_does_not_touch_what_is_not_transient():
    error = PermanentError("550")
    assert settled(error, spend=False) == DeadLetter("permanent", error)


@pytest.mark.parametrize(("deferrals", "delay"), [(0, 1), (1, 5), (2, 30), (3, 30), (9, 30)])
def test_an_early_event_is_deferred_by_the_delays_staying_on_the_last(deferrals, delay):
    early = OutOfOrder(PAID, 0)
    assert settled(early, {h.DEFERRALS: deferrals}) == Defer(delay, deferrals + 1, early)


def test_deferrals_do_not_spend_the_retry_budget_nor_the_other_way_round():
    early = OutOfOrder(PAID, 0)
    assert settled(early, {h.ATTEMPT: 3}) == Defer(1, 1, early)
    error = ConnectionError("down")
    assert settled(error, {h.DEFERRALS: 9}) == Retry(1, 1, error)


def test_an_event_deferred_max_deferrals_times_is_dead_lettered_as_out_of_order():
    early = OutOfOrder(PAID, 0)
    assert settled(early, {h.DEFERRALS: 2}, max_deferrals=2) == DeadLetter(
        "out-of-order", early, attempts=3)


@pytest.mark.parametrize("value", ["three", None, b"\xff", -4])
def test_a_counter_that_is_no_count_reads_as_zero(value):
    error = ConnectionError("down")
    assert settled(error, {h.ATTEMPT: value}) == Retry(1, 1, error)


@pytest.mark.parametrize(("result", "counts"), [
    (ConnectionError("down"), True),
    (RuntimeError("bug"), True),
    (PoisonMessage("junk"), False),
    (PermanentError("550"), False),
    (Conflict(PAID, holder="other"), False),
    (OutOfOrder(PAID, 0), False),
    (Outcome.APPLIED, False),
])
def test_only_transient_failures_are_the_kill_switch_s_to_count(result, counts):
    assert transient(result) is counts
