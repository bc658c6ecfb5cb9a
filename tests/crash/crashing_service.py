"""Run a service exactly like `python -m <service>`, but SIGKILL it at one chosen point.

    CRASH_AT=after-commit  python tests/crash/crashing_service.py points
        the first event whose effect and inbox record have committed kills the consumer
        before it acks (the broker still holds the message as unacked)
    CRASH_AT=after-publish python tests/crash/crashing_service.py payment
        the relay's first batch confirmed by the broker kills the process before the
        outbox rows are marked as sent

A test-only seam: it wraps one library method in this process and changes nothing in the
services' code. The kill is a real SIGKILL of this process: no cleanup, no flush, no ack.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after_commit() -> None:
    from messaging.chassis.runtime import ConsumerRuntime
    from messaging.inbox import Outcome

    original = ConsumerRuntime.process

    async def process(self, event):
        outcome = await original(self, event)  # effect + inbox record committed here
        if outcome is Outcome.APPLIED:
            die()  # ... and the ack never happens
        return outcome

    ConsumerRuntime.process = process


def after_publish() -> None:
    from messaging.outbox import OutboxRelay

    original = OutboxRelay._mark

    async def record(self, session, rows, results):
        if any(r is None for r in results):  # the broker confirmed at least one publish
            die()  # ... and published_at is never written
        return await original(self, session, rows, results)

    OutboxRelay._mark = record


CRASH_POINTS = {"after-commit": after_commit, "after-publish": after_publish}

if __name__ == "__main__":
    service = sys.argv[1]
    CRASH_POINTS[os.environ["CRASH_AT"]]()
    runpy.run_module(service, run_name="__main__", alter_sys=True)  # = python -m <service>
