"""The correlation id of the work in progress, carried in a context variable.

Set from `X-Correlation-ID` on HTTP requests and from the AMQP `correlation_id` property on
consumed messages; read by the log formatter and the span processor.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

HEADER = "X-Correlation-ID"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

current: ContextVar[str | None] = ContextVar("correlation_id", default=None)


def valid_or_new(candidate: str | None) -> str:
    """Accept a caller's id if it is sane (printable, bounded), otherwise mint a new UUID."""
    if candidate and _VALID.match(candidate):
        return candidate
    return str(uuid.uuid4())


def get() -> str | None:
    return current.get()
