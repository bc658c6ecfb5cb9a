"""The kill switch's decisions (messaging/operations/killswitch.py): pure, on a clock the
test moves (the test kit's FakeClock, or the times written out)."""

from __future__ import annotations

import pytest

from messaging.operations.killswitch import By, KillSwitch, Mode, Policy
from messaging.testing.clock import FakeClock

pytestmark = pytest.mark.unit

POLICY = Policy(failure_ratio=0.8, window_seconds=30, min_messages=10, cooldown_seconds=5,
                max_cooldown_seconds=30)


def tripped(switch: KillSwitch, now: float = 0.0) -> KillSwitch:
    for i in range(POLICY.min_messages):
        switch.outcome(now + i * 0.1, failed=True, error="SMTPConnectError: refused")
    assert switch.status.mode is Mode.PAUSED
    return switch


def test_failures_below_the_minimum_number_of_messages_spend_their_budget_and_do_not_trip():
    switch = KillSwitch(POLICY)
    verdicts = [switch.outcome(i, failed=True, error="e") for i in range(9)]
    assert all(v.spend and v.change is None for v in verdicts)
    assert switch.status.mode is Mode.RUNNING


def test_the_failure_that_crosses_the_threshold_pauses_until_the_cool_down_and_is_not_spent():
    switch = KillSwitch(POLICY)
    for i in range(9):
        switch.outcome(i, failed=True, error="e")
    verdict = switch.outcome(9, failed=True, error="SMTPConnectError: refused")
    assert not verdict.spend
    assert verdict.change is not None
    assert verdict.change.mode is Mode.PAUSED and verdict.change.by is By.SWITCH
    assert verdict.change.until == 9 + 5
    assert "10 of 10 messages failed in 30s" in verdict.change.reason
    assert "SMTPConnectError: refused" in verdict.change.reason


def test_a_failure_ratio_below_the_threshold_does_not_trip():
    switch = KillSwitch(POLICY)
    for i in range(100):  # one in four fails
        switch.outcome(i * 0.1, failed=i % 4 == 0, error="e")
    assert switch.status.mode is Mode.RUNNING


def test_outcomes_older_than_the_window_are_forgotten():
    switch, clock = KillSwitch(POLICY), FakeClock()
    for _ in range(9):
        switch.outcome(clock.now, failed=True, error="e")
        clock.advance(1)
    # 40 s later: the nine are out of the window, one failure alone is below the minimum.
    assert switch.outcome(clock.advance(40), failed=True, error="e").spend
    assert switch.status.mode is Mode.RUNNING


def test_failures_while_paused_are_not_spent_and_successes_change_nothing():
    switch = tripped(KillSwitch(POLICY))
    verdict = switch.outcome(2, failed=True, error="e")
    assert not verdict.spend and verdict.change is None
    assert switch.outcome(2, failed=False).change is None
    assert switch.status.mode is Mode.PAUSED


def test_no_probe_before_the_cool_down_then_the_first_message_delivered_is_the_probe():
    clock = FakeClock()
    switch = tripped(KillSwitch(POLICY), clock.now)  # its last failure at 0.9 s
    assert switch.admit() is False  # paused: a straggler, not a probe
    assert switch.probe_due(clock.advance(5.0)) is None
    status = switch.probe_due(clock.advance(0.9))
    assert status is not None and status.mode is Mode.PROBING
    assert switch.admit() is True
    assert switch.admit() is False  # one probe at a time


def test_a_successful_probe_resumes_with_the_first_cool_down_again():
    switch = tripped(KillSwitch(POLICY))
    switch.probe_due(10)
    switch.admit()
    switch.outcome(10.1, failed=True, probe=True, error="e")  # cool-down now 10
    switch.probe_due(20.1)
    switch.admit()
    verdict = switch.outcome(20.2, failed=False, probe=True)
    assert verdict.change is not None and verdict.change.mode is Mode.RUNNING
    tripped(switch, now=30)
    assert switch.status.until == pytest.approx(30.9 + 5)


def test_a_failed_probe_pauses_again_with_a_doubled_cool_down_capped_and_is_not_spent():
    switch = tripped(KillSwitch(POLICY))
    cooldowns = []
    now = 1.0
    for _ in range(5):
        now = switch.status.until or now
        switch.probe_due(now)
        assert switch.admit()
        verdict = switch.outcome(now, failed=True, probe=True, error="refused")
        assert not verdict.spend
        assert verdict.change is not None and verdict.change.reason == "the probe failed: refused"
        cooldowns.append(verdict.change.cooldown)
    assert cooldowns == [10, 20, 30, 30, 30]


def test_a_straggler_failing_while_probing_is_not_spent_and_does_not_decide():
    switch = tripped(KillSwitch(POLICY))
    switch.probe_due(6)
    assert not switch.outcome(6.1, failed=True, error="e").spend
    assert switch.status.mode is Mode.PROBING


def test_a_probe_settled_without_a_verdict_lets_the_next_message_probe():
    switch = tripped(KillSwitch(POLICY))
    switch.probe_due(6)
    assert switch.admit()  # the probe: say, an event deferred as out of order
    switch.release_probe()
    assert switch.status.mode is Mode.PROBING
    assert switch.admit()


def test_releasing_a_decided_probe_changes_nothing():
    switch = tripped(KillSwitch(POLICY))
    switch.probe_due(6)
    switch.admit()
    switch.outcome(6.1, failed=False, probe=True)
    switch.release_probe()
    assert switch.status.mode is Mode.RUNNING and not switch.admit()


def test_an_operator_pause_holds_without_a_probe_until_an_operator_resumes():
    switch = KillSwitch(POLICY)
    status = switch.pause("mail server maintenance")
    assert (status.mode, status.by, status.until) == (Mode.PAUSED, By.OPERATOR, None)
    assert switch.probe_due(10_000) is None
    assert not switch.outcome(1, failed=True, error="e").spend
    assert switch.resume().mode is Mode.RUNNING


def test_an_operator_resume_ends_a_switch_pause_and_its_long_cool_down():
    switch = tripped(KillSwitch(POLICY))
    switch.probe_due(6)
    switch.admit()
    switch.outcome(6, failed=True, probe=True, error="e")
    switch.resume()
    tripped(switch, now=100)
    assert switch.status.cooldown == 5


def test_an_operator_pause_while_probing_makes_the_probe_an_ordinary_straggler():
    switch = tripped(KillSwitch(POLICY))
    switch.probe_due(6)
    assert switch.admit()
    switch.pause("by hand")
    verdict = switch.outcome(6.5, failed=False, probe=True)
    assert verdict.change is None and switch.status.by is By.OPERATOR


@pytest.mark.parametrize("bad", [
    {"failure_ratio": 0}, {"failure_ratio": 1.5}, {"min_messages": 0},
    {"window_seconds": 0}, {"cooldown_seconds": 10, "max_cooldown_seconds": 5},
])
def test_a_policy_that_cannot_work_is_refused(bad):
    with pytest.raises(ValueError):
        Policy(**bad)
