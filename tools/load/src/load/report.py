"""The summary a load run ends with, and its verdict: pure, from the numbers Locust kept and
what the effects check found."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Totals:
    requests: int
    failures: int
    requests_per_second: float
    percentiles_ms: dict[str, float]  # "p50", "p95", "p99", "max"
    payments: int  # accepted (201)
    refunds: int  # accepted (200)
    retried: int  # answers a client retries (503, no connection) and retried


def summary(run_id: str, totals: Totals, wrong: dict[str, list[str]] | None,
            check_error: str | None = None) -> str:
    """A few lines a person reads at the end of `make load`. `wrong` is None when the effects
    were not checked (`check_error` says why, when the check itself failed)."""
    latency = "  ".join(f"{k} {v:.0f}" for k, v in totals.percentiles_ms.items())
    lines = [
        f"load run {run_id}",
        f"  requests   {totals.requests} ({totals.requests_per_second:.1f}/s), "
        f"failures {totals.failures}, retried {totals.retried}",
        f"  latency ms {latency}",
        f"  payments   {totals.payments} accepted, {totals.refunds} refunded",
    ]
    if wrong is None:
        lines.append(f"  effects    not checked: {check_error or 'the run did not stop'}")
    elif not wrong:
        lines.append(f"  effects    all present, once, for all {totals.payments} payments "
                     "(points, mails, audit, shipment)")
    else:
        lines.append(f"  effects    {len(wrong)} of {totals.payments} payments incomplete:")
        for order_id, problems in sorted(wrong.items())[:10]:
            lines.append(f"    order {order_id}: {'; '.join(problems)}")
        if len(wrong) > 10:
            lines.append(f"    ... and {len(wrong) - 10} more")
    return "\n".join(lines)


def exit_code(totals: Totals, wrong: dict[str, list[str]] | None) -> int:
    """0 only when no request failed and every payment's effects were found complete."""
    return 0 if totals.failures == 0 and wrong == {} else 1
