"""How a delivery is settled, decided without I/O: what handling it came to (an outcome or
an exception), the message's headers (its counters) and its queue's retry delays in; what
to do with it out. The consumer (messaging/consumer.py) carries it out.

    an Outcome (applied/duplicate/stale/clash/ignored) -> Ack
    PoisonMessage (headers or body not ours)           -> DeadLetter("poison"), at once; the
                                                          copy carries only our headers when
                                                          its own are what is wrong
    Conflict (another event holds its place)           -> DeadLetter("conflict"), at once
    PermanentError                                     -> DeadLetter("permanent"), at once
    OutOfOrder (its predecessor is not applied yet)    -> Defer by the same delays (staying
                                                          on the last), its own budget;
                                                          DeadLetter("out-of-order") past
                                                          max_deferrals
    anything else (transient), the kill switch:
        spend the budget                               -> Retry after retry_delays[attempt];
                                                          DeadLetter("exhausted") when used up
        an outage                                      -> Requeue: back to the work queue,
                                                          the budget unspent

The counters come from the message (`retry-attempt`, `deferrals`), never from memory, so a
replayed message starts with the budget its headers give it. Whether a transient failure
spends the budget is the kill switch's verdict (messaging/operations/killswitch.py), passed
in as `spend`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from contracts import PoisonMessage
from messaging import headers as h
from messaging.inbox import Conflict, Outcome, OutOfOrder


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (e.g. the mail server rejects the address)."""


@dataclass(frozen=True)
class Ack:
    outcome: Outcome


@dataclass(frozen=True)
class Retry:
    """A transient failure: to the wait queue of `after_seconds`, then back to work."""

    after_seconds: int
    attempt: int  # failed attempts so far, this one included: the copy's retry-attempt
    error: Exception
    reason = "transient"


@dataclass(frozen=True)
class Defer:
    """Too early: to the wait queue of `after_seconds`, on its own budget."""

    after_seconds: int
    deferrals: int  # deferrals so far, this one included: the copy's deferrals
    error: Exception
    reason = "out-of-order"


@dataclass(frozen=True)
class Requeue:
    """A failure the kill switch took for an outage: a fresh copy to the back of the work
    queue with the headers it came with, so neither the retry ladder nor the queue's
    delivery limit counts it."""

    error: Exception
    reason = "paused"


@dataclass(frozen=True)
class DeadLetter:
    """To <queue>.dlq, saying why (error-class): poison, conflict, permanent, exhausted or
    out-of-order."""

    reason: str
    error: Exception
    attempts: int = 1  # the DLQ copy's error-attempts
    keep_headers: bool = True  # False: the copy carries only our headers


Settlement = Ack | Retry | Defer | Requeue | DeadLetter


def transient(result: Outcome | Exception) -> bool:
    """A failure the retry ladder is for: the only kind the kill switch counts."""
    return isinstance(result, Exception) and not isinstance(
        result, PoisonMessage | Conflict | PermanentError | OutOfOrder)


def settle(
    result: Outcome | Exception,
    headers: Mapping[str, object] | None,
    *,
    retry_delays: Sequence[int],
    max_deferrals: int,
    spend: bool = True,
) -> Settlement:
    """What to do with a delivery whose handling came to `result` (the table above).

    `spend` is the kill switch's verdict on a transient failure: False when it takes the
    failure for part of an outage.
    """
    match result:
        case Outcome():
            return Ack(result)
        case PoisonMessage():
            return DeadLetter("poison", result, keep_headers=h.problem(headers) is None)
        case Conflict():  # no retry can give it back its place
            return DeadLetter("conflict", result)
        case PermanentError():
            return DeadLetter("permanent", result)
        case OutOfOrder():
            deferrals = _count(headers, h.DEFERRALS)
            if deferrals >= max_deferrals:
                return DeadLetter("out-of-order", result, attempts=deferrals + 1)
            delay = retry_delays[min(deferrals, len(retry_delays) - 1)]
            return Defer(delay, deferrals + 1, result)
    if not spend:
        return Requeue(result)
    attempt = _count(headers, h.ATTEMPT)
    if attempt >= len(retry_delays):
        return DeadLetter("exhausted", result, attempts=attempt + 1)
    return Retry(retry_delays[attempt], attempt + 1, result)


def _count(headers: Mapping[str, object] | None, name: str) -> int:
    """A counter header of ours; absent or not a number: 0."""
    try:
        count: int = int((headers or {}).get(name, 0))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0
    return max(0, count)
