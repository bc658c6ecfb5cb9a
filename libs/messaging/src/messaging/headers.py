"""Names of the AMQP headers we set ourselves.

None starts with `x-`: that prefix is the broker's bookkeeping (x-death, x-delivery-count),
which it may reset or ignore when a client sets it (tests/versions shows how 3.10 and 4.0
differ), and our retry count must survive any broker version.
"""

from __future__ import annotations

from collections.abc import Mapping

ATTEMPT = "retry-attempt"  # how many times the handler has failed on this message so far
DEFERRALS = "deferrals"  # how many times it waited for an earlier event of its order

ERROR_CLASS = "error-class"  # poison | exhausted | permanent | out-of-order
ERROR_SERVICE = "error-service"
ERROR_TYPE = "error-type"  # the exception's class name
ERROR_MESSAGE = "error-message"
ERROR_ATTEMPTS = "error-attempts"
ERROR_AT = "error-at"  # ISO 8601, UTC
ERROR_QUEUE = "error-queue"  # the work queue it came from: where a replay sends it

ERROR_HEADERS = (
    ERROR_CLASS, ERROR_SERVICE, ERROR_TYPE, ERROR_MESSAGE, ERROR_ATTEMPTS, ERROR_AT, ERROR_QUEUE,
)

# The W3C trace context the instrumentation adds on publish: carried, never interpreted.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
# Far above any budget a message of ours can reach (MAX_DEFERRALS <= 100, a few retries).
MAX_COUNT = 1000
MAX_TEXT = 4096
_COUNTS = (ATTEMPT, DEFERRALS, ERROR_ATTEMPTS)


def problem(headers: Mapping[str, object] | None) -> str | None:
    """What makes these headers ones no message of ours can have (None: they are fine).

    Checked like the body, before anything else: a count that is not a whole number in
    0..MAX_COUNT (1e38 once made the retry copy unencodable and stalled the consumer), a
    text header that is not short text, or a header nobody here sets. The broker's own
    (`x-...`) are not ours to judge.
    """
    for name, value in (headers or {}).items():
        if name.startswith("x-"):
            continue
        if name in _COUNTS:
            if type(value) is not int or not 0 <= value <= MAX_COUNT:
                return f"header {name!r} must be a whole number 0..{MAX_COUNT}, not {value!r:.40}"
        elif name in TRACE_HEADERS or name in ERROR_HEADERS:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if not isinstance(text, str) or len(text) > MAX_TEXT:
                return f"header {name!r} must be text of at most {MAX_TEXT} characters"
        else:
            return f"unexpected header {name[:64]!r}"
    return None
