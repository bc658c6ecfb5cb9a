"""A clock the test moves: time that passes only when the test (or the in-memory broker)
says so.

One type for every test that needs time: the in-memory broker's TTLs run on it
(messaging/testing/fake_broker.py), and code that takes the time as an argument (the kill
switch's `outcome(now, ...)`, messaging/operations/killswitch.py) is given `clock.now`.
Calling it reads it, like `time.monotonic()`, so it can stand in where a clock function is
taken.
"""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward (never back); returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        self.now += seconds
        return self.now
