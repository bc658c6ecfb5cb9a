"""How dead letters are grouped: pure functions, no I/O.

Two dead letters are in one group when they failed in the same service, with the same error
class and exception type, on the same event type, with the same error message once ids,
numbers and addresses are taken out ("order 7f3c... declined after 3 tries" and
"order 91ab... declined after 4 tries" are one problem, not two).
"""

from __future__ import annotations

import hashlib
import re

_PATTERNS = (
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
     "<id>"),
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), "<address>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{8,}\b"), "<id>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
)
MAX_MESSAGE_CHARS = 300


def normalise(message: str) -> str:
    """The error message without what differs from one occurrence to the next."""
    for pattern, replacement in _PATTERNS:
        message = pattern.sub(replacement, message)
    return " ".join(message.split())[:MAX_MESSAGE_CHARS]


def fingerprint(service: str, error_class: str, error_type: str, event_type: str,
                error_message: str) -> str:
    """The group id: 16 hex digits of a hash over what makes two failures the same."""
    key = "\x1f".join((service, error_class, error_type, event_type, normalise(error_message)))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def title(service: str, error_class: str, error_type: str, event_type: str,
          error_message: str) -> str:
    """A group's one-line name, for people."""
    return (f"{service}: {error_type or error_class} ({error_class}) on {event_type or '?'}: "
            f"{normalise(error_message)}")
