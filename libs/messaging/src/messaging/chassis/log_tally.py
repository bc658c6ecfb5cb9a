"""A warning that can come thousands of times a second, logged as a count instead.

The first of a burst is logged at once; the rest are counted by kind and by source and
logged as one line per interval while they keep coming (the caller keeps the clock).
"""

from __future__ import annotations

from collections import Counter


class LogTally:
    def __init__(self) -> None:
        self._kinds: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()
        self._in_burst = False

    def add(self, kind: str, source: str) -> bool:
        """Count one; True when it starts a burst: log it now, and `summary()` after an
        interval."""
        if not self._in_burst:
            self._in_burst = True
            return True
        self._kinds[kind] += 1
        self._sources[source] += 1
        return False

    def summary(self) -> str | None:
        """What was counted since the last summary, and start counting afresh; None when
        nothing was (the burst is over: the next `add` is logged at once again)."""
        if not self._kinds:
            self._in_burst = False
            return None
        total = sum(self._kinds.values())
        kinds = ", ".join(f"{n} {kind}" for kind, n in self._kinds.most_common())
        source, most = self._sources.most_common(1)[0]
        self._kinds.clear()
        self._sources.clear()
        return f"{total} more: {kinds}; most from {source} ({most})"
