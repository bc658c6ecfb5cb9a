"""Reading one metric off a running process's /metrics, as the end-to-end tests do."""

from __future__ import annotations

import httpx


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples at `url`/metrics whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
