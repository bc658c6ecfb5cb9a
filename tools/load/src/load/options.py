"""The load run's own command-line values, checked as they are read (a bad one stops the run
with argparse's message, exit 2), and its defaults."""

from __future__ import annotations

import argparse
import secrets
import time

# The services the scenario reads besides payment (Locust's --host): option, environment
# variable (the compose profile sets them), default (`make run`'s ports).
SERVICE_URLS = {
    "points": ("LOAD_POINTS_URL", "http://127.0.0.1:8001"),
    "mailer": ("LOAD_MAILER_URL", "http://127.0.0.1:8002"),
    "audit": ("LOAD_AUDIT_URL", "http://127.0.0.1:8003"),
    "shipping": ("LOAD_SHIPPING_URL", "http://127.0.0.1:8004"),
}


def _read(text: str, kind: type[float] | type[int], what: str) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def positive_float(text: str) -> float:
    value = _read(text, float, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def positive_int(text: str) -> int:
    value = int(_read(text, int, "a whole number"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def share(text: str) -> float:
    """A fraction from 0 to 1 (the share of orders refunded)."""
    value = _read(text, float, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1: {text!r}")
    return value


def run_id(text: str) -> str:
    """A name for the run that can stand in a correlation id and a customer id."""
    if not text or len(text) > 40 or not all(c.isascii() and (c.isalnum() or c in "-_")
                                             for c in text):
        raise argparse.ArgumentTypeError(
            f"1-40 of A-Z, a-z, 0-9, '-', '_': {text!r}")
    return text


def new_run_id() -> str:
    """`load-<UTC time>-<4 hex>`: sortable, and unique among runs of the same second."""
    return f"load-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
