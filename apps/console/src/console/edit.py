"""Edit & replay: whether an edited body may go, and what changed. Pure functions."""

from __future__ import annotations

import difflib
import json

from contracts import PoisonMessage, parse_event


class EditRefused(ValueError):
    """The edited body cannot be replayed; the message names the field."""


def check_edit(original_event_id: str, body: bytes) -> None:
    """The edited body must be an event of the contract (contracts.parse_event, the same
    check the consumers make) and keep the event id: the inbox knows the event by it."""
    try:
        event = parse_event(body)
    except PoisonMessage as exc:
        raise EditRefused(str(exc)) from None
    if str(event.event_id) != original_event_id:
        raise EditRefused(f"event_id: must stay {original_event_id} (the inbox knows the "
                          f"event by it), not {event.event_id}")


def _pretty(body: bytes) -> list[str]:
    try:
        text = json.dumps(json.loads(body), indent=2, sort_keys=True, ensure_ascii=False)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace")
    return text.splitlines()


def diff(before: bytes, after: bytes) -> str:
    """A unified diff of the two bodies, each as indented JSON with sorted keys."""
    return "\n".join(difflib.unified_diff(_pretty(before), _pretty(after), "before", "after",
                                          lineterm=""))
