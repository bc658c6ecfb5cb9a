"""The kill switch of one consumer: when to stop taking messages, when to try one, when to
go on. Pure decisions, no I/O: the caller passes the time (`time.monotonic()`) and acts on
what comes back (messaging/operations/flow_control.py cancels and resumes the subscription).

    running --(transient failures >= ratio of >= min messages in the window)--> paused
    paused  --(cool-down over)--> probing: the next message delivered is the probe
    probing --(the probe succeeded)--> running (cool-down back to its start)
    probing --(the probe failed)--> paused again, the cool-down doubled (capped)
    any     --(operator pause)--> paused, until an operator resumes it (no probe)
    any     --(operator resume)--> running

Only transient handler failures count (the kind the retry ladder is for): poison, conflict,
permanent and out-of-order messages say nothing about a dependency. A transient failure
spends the message's retry budget only while running and below the threshold: the one that
trips the switch, failures while paused and a failed probe do not (`Verdict.spend`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from enum import StrEnum


class Mode(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    PROBING = "probing"


class By(StrEnum):
    SWITCH = "switch"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Policy:
    failure_ratio: float = 0.8
    window_seconds: float = 30.0
    min_messages: int = 10
    cooldown_seconds: float = 5.0
    max_cooldown_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.window_seconds <= 0 or self.min_messages < 1 or self.cooldown_seconds <= 0:
            raise ValueError("window, min_messages and cool-down must be positive")
        if self.max_cooldown_seconds < self.cooldown_seconds:
            raise ValueError("max_cooldown_seconds must be at least cooldown_seconds")


@dataclass(frozen=True)
class Status:
    mode: Mode = Mode.RUNNING
    by: By | None = None  # who paused it (None while running)
    reason: str = ""
    until: float | None = None  # monotonic time the cool-down ends; None: no automatic probe
    cooldown: float = 0.0  # the cool-down this pause was given (seconds)


@dataclass(frozen=True)
class Verdict:
    spend: bool  # a failure: send it down the retry ladder (True) or back to the queue
    change: Status | None  # the new status when this outcome changed it


class KillSwitch:
    def __init__(self, policy: Policy):
        self.policy = policy
        self.status = Status()
        self._cooldown = policy.cooldown_seconds
        self._outcomes: deque[tuple[float, bool]] = deque()  # (when, failed), running only
        self._probe_taken = False

    def admit(self) -> bool:
        """A message was delivered: True if it is the probe (the first one while probing)."""
        if self.status.mode is Mode.PROBING and not self._probe_taken:
            self._probe_taken = True
            return True
        return False

    def release_probe(self) -> None:
        """The probe's message was settled without a verdict (poison, permanent, conflict,
        out of order: nothing about the dependency): the next message delivered probes."""
        if self.status.mode is Mode.PROBING:
            self._probe_taken = False

    def outcome(self, now: float, *, failed: bool, probe: bool = False,
                error: str = "") -> Verdict:
        """A message's handler succeeded, or failed transiently (`error` says how)."""
        mode = self.status.mode
        if probe and mode is Mode.PROBING:
            if failed:
                self._cooldown = min(self._cooldown * 2, self.policy.max_cooldown_seconds)
                return Verdict(False, self._pause(now, f"the probe failed: {error}"))
            return Verdict(True, self._run())
        if mode is not Mode.RUNNING:
            return Verdict(not failed, None)  # in flight when it paused: nothing spent
        self._outcomes.append((now, failed))
        while self._outcomes and self._outcomes[0][0] <= now - self.policy.window_seconds:
            self._outcomes.popleft()
        if not failed:
            return Verdict(True, None)
        total = len(self._outcomes)
        failures = sum(f for _, f in self._outcomes)
        if total >= self.policy.min_messages and failures >= self.policy.failure_ratio * total:
            reason = (f"{failures} of {total} messages failed in "
                      f"{self.policy.window_seconds:g}s; last: {error}")
            return Verdict(False, self._pause(now, reason))
        return Verdict(True, None)

    def probe_due(self, now: float) -> Status | None:
        """The cool-down is over: probing from now (the new status), else None."""
        until = self.status.until
        if self.status.mode is not Mode.PAUSED or until is None or now < until:
            return None
        self._probe_taken = False
        self.status = replace(self.status, mode=Mode.PROBING, until=None)
        return self.status

    def pause(self, reason: str) -> Status:
        """An operator's pause: holds until an operator resumes."""
        self.status = Status(Mode.PAUSED, By.OPERATOR, reason, until=None)
        return self.status

    def resume(self) -> Status:
        """An operator's resume: full speed now, whatever the state."""
        return self._run()

    def _pause(self, now: float, reason: str) -> Status:
        self._outcomes.clear()
        self.status = Status(Mode.PAUSED, By.SWITCH, reason, now + self._cooldown,
                             self._cooldown)
        return self.status

    def _run(self) -> Status:
        self._outcomes.clear()
        self._cooldown = self.policy.cooldown_seconds
        self.status = Status()
        return self.status
