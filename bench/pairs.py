"""Same-run alternated pairs (``--baseline-tree``): the figures of each pair side by side and
their ratio, current / baseline.

Pure (unit-tested in ``bench/tests``): which figures are compared (``headline``), and the
comparison of several pairs (``compare``, ``format_comparison``). Alternating the two sides
(baseline, current, baseline, current) spreads a drift in the machine's load over both
instead of favouring one; the ratio of each pair is taken within the pair, then the pairs'
ratios are shown side by side with their median.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# the figures worth a ratio: CPU per payment, machine, idle cost, latency, throughput
_HEADLINE = re.compile(
    r"^(?:"
    r"fixed_rates\.rates\.[^.]+\.(?:cpu_ms_per_payment\.[^.]+|machine\.(?:ms_per_payment|"
    r"stack_ms_per_payment|busy_share)|latency\.(?:post|e2e)\.p(?:50|99)|"
    r"switches_per_payment\.voluntary\.[^.]+)"
    r"|idle\.(?:core_pct|switches_per_second\.voluntary)\.[^.]+"
    r"|saturation\.(?:rate|machine_busy_share|cpu_ms_per_payment\.[^.]+)"
    r"|fixed_rate\.(?:rate|latency_ms\.(?:post|e2e)\.p(?:50|99))"
    r"|ceiling\.rate"
    r")$"
)


def numeric_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in a nested dict by dotted path (booleans are not numbers here)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= numeric_leaves(value, f"{path}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def headline(results: Mapping[str, Any]) -> dict[str, float]:
    """The figures of one side's results that a comparison shows."""
    return {k: v for k, v in numeric_leaves(results).items() if _HEADLINE.match(k)}


def compare(rounds: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> dict[str, Any]:
    """``[(baseline results, current results), ...]`` → per figure, both sides' values in
    each pair, each pair's ratio current / baseline (None when the baseline is 0 or a side
    lacks it) and the median of those ratios. Figures in the order the first pair has them."""
    sides = [(headline(b), headline(c)) for b, c in rounds]
    keys: list[str] = []
    for b, c in sides:
        keys += [k for k in (*b, *c) if k not in keys]
    out: dict[str, Any] = {}
    for key in keys:
        base = [b.get(key) for b, _c in sides]
        cur = [c.get(key) for _b, c in sides]
        ratios = [None if b is None or c is None or b == 0 else c / b
                  for b, c in zip(base, cur, strict=True)]
        known = [r for r in ratios if r is not None]
        out[key] = {"baseline": base, "current": cur,
                    "ratio": [None if r is None else round(r, 3) for r in ratios],
                    "ratio_median": round(statistics.median(known), 3) if known else None}
    return out


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def format_comparison(comparison: Mapping[str, Any]) -> str:
    """One line per figure: baseline → current of each pair, then the median ratio."""
    if not comparison:
        return "no figure to compare"
    width = max(len(k) for k in comparison)
    lines = [f"{'figure':<{width}}  pairs (baseline → current)  ratio current/baseline (median)"]
    for key, c in comparison.items():
        pairs = "  ".join(f"{_num(b)}→{_num(v)}" for b, v in zip(c["baseline"], c["current"],
                                                                  strict=True))
        ratios = " ".join(_num(r) for r in c["ratio"])
        lines.append(f"{key:<{width}}  {pairs}  {ratios} ({_num(c['ratio_median'])})")
    return "\n".join(lines)
