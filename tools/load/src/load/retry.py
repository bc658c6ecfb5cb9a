"""When a client tries a request again: as a real shop client would, on the answers that say
"not now" (503, or no connection at all), after the server's Retry-After or a growing pause."""

from __future__ import annotations

# 0: no answer (connection refused or reset; Locust's status for it). 502/504: a proxy in
# front (HAProxy in the cluster profile) found no replica in time.
RETRYABLE = frozenset({0, 502, 503, 504})
MAX_PAUSE_SECONDS = 5.0


def pause_before(attempt: int, retry_after: str | None) -> float:
    """Seconds to wait before attempt `attempt + 1`: the server's `Retry-After` (seconds) when
    it gave a usable one, else 0.2 s doubling per attempt; never more than 5 s."""
    if retry_after is not None:
        try:
            seconds = float(retry_after)
        except ValueError:
            seconds = -1.0
        if 0 <= seconds <= MAX_PAUSE_SECONDS:
            return seconds
    return min(0.2 * 2 ** (attempt - 1), MAX_PAUSE_SECONDS)
