"""The end-of-run summary and its verdict."""

import pytest

from load.report import Totals, exit_code, summary

pytestmark = pytest.mark.unit

TOTALS = Totals(requests=1200, failures=0, requests_per_second=20.04,
                percentiles_ms={"p50": 12.0, "p95": 41.0, "p99": 88.4, "max": 130.0},
                payments=200, refunds=19, retried=2)


def test_the_summary_gives_rate_failures_percentiles_payments_and_effects():
    text = summary("load-1", TOTALS, {})
    assert text.splitlines() == [
        "load run load-1",
        "  requests   1200 (20.0/s), failures 0, retried 2",
        "  latency ms p50 12  p95 41  p99 88  max 130",
        "  payments   200 accepted, 19 refunded",
        "  effects    all present, once, for all 200 payments (points, mails, audit, shipment)",
    ]


def test_incomplete_orders_are_listed_up_to_ten():
    wrong = {f"order-{i:02d}": ["missing mails Your refund"] for i in range(12)}
    lines = summary("load-1", TOTALS, wrong).splitlines()
    assert lines[4] == "  effects    12 of 200 payments incomplete:"
    assert lines[5] == "    order order-00: missing mails Your refund"
    assert lines[-1] == "    ... and 2 more"


def test_a_check_that_could_not_run_says_why():
    lines = summary("load-1", TOTALS, None, "could not read the effects: ConnectionError: …")
    assert lines.splitlines()[-1] == (
        "  effects    not checked: could not read the effects: ConnectionError: …")


@pytest.mark.parametrize(("failures", "wrong", "code"), [
    (0, {}, 0), (1, {}, 1), (0, {"o": ["missing audit OrderPaid"]}, 1), (0, None, 1)])
def test_the_run_passes_only_without_failures_and_with_every_effect_checked_and_present(
    failures, wrong, code
):
    assert exit_code(Totals(**{**TOTALS.__dict__, "failures": failures}), wrong) == code
