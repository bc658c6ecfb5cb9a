"""Same-run pairs: which figures are compared, their ratios and the printed comparison."""

import pytest

from bench.pairs import compare, format_comparison, headline, numeric_leaves


def _side(points_ms: float, idle_pct: float, post_p99: float) -> dict:
    return {
        "fixed_rates": {
            "saturation_rate": 80.0,  # an input, not a figure to compare
            "rates": {"10": {
                "offered_rate": 10,
                "drained": True,
                "cpu_ms_per_payment": {"points": points_ms, "services": 5 * points_ms},
                "machine": {"ms_per_payment": 50.0, "busy_share": 0.3, "other_cpu_s": 1.0},
                "latency": {"post": {"p50": 5.0, "p99": post_p99, "count": 300}},
            }},
        },
        "idle": {"core_pct": {"points": idle_pct}, "seconds": 20.0},
    }


@pytest.mark.unit
def test_numeric_leaves_are_dotted_paths_without_booleans():
    leaves = numeric_leaves({"a": {"b": 1, "c": True, "d": [1, 2], "e": {"f": 2.5}}, "g": "x"})
    assert leaves == {"a.b": 1.0, "a.e.f": 2.5}


@pytest.mark.unit
def test_headline_keeps_cpu_per_payment_machine_idle_and_latency_percentiles():
    assert sorted(headline(_side(4.0, 0.5, 12.0))) == [
        "fixed_rates.rates.10.cpu_ms_per_payment.points",
        "fixed_rates.rates.10.cpu_ms_per_payment.services",
        "fixed_rates.rates.10.latency.post.p50",
        "fixed_rates.rates.10.latency.post.p99",
        "fixed_rates.rates.10.machine.busy_share",
        "fixed_rates.rates.10.machine.ms_per_payment",
        "idle.core_pct.points",
    ]


@pytest.mark.unit
def test_each_pair_gets_its_own_ratio_and_the_median_summarises_them():
    rounds = [(_side(4.0, 0.5, 10.0), _side(2.0, 0.25, 12.0)),
              (_side(5.0, 0.4, 10.0), _side(2.0, 0.1, 9.0)),
              (_side(4.0, 0.0, 10.0), _side(3.0, 0.1, 10.0))]
    c = compare(rounds)
    points = c["fixed_rates.rates.10.cpu_ms_per_payment.points"]
    assert points["baseline"] == [4.0, 5.0, 4.0]
    assert points["current"] == [2.0, 2.0, 3.0]
    assert points["ratio"] == [0.5, 0.4, 0.75]
    assert points["ratio_median"] == 0.5
    idle = c["idle.core_pct.points"]
    assert idle["ratio"] == [0.5, 0.25, None]  # nothing to divide by: no ratio
    assert idle["ratio_median"] == 0.375


@pytest.mark.unit
def test_a_figure_one_side_lacks_has_no_ratio_for_that_pair():
    base = _side(4.0, 0.5, 10.0)
    cur = _side(2.0, 0.5, 10.0)
    del cur["idle"]
    c = compare([(base, cur)])
    assert c["idle.core_pct.points"] == {"baseline": [0.5], "current": [None],
                                         "ratio": [None], "ratio_median": None}


@pytest.mark.unit
def test_the_comparison_prints_a_line_per_figure_with_the_median_ratio():
    text = format_comparison(compare([(_side(4.0, 0.5, 10.0), _side(2.0, 0.25, 12.0))]))
    line = next(ln for ln in text.splitlines()
                if ln.startswith("fixed_rates.rates.10.cpu_ms_per_payment.points"))
    assert line.split()[1:] == ["4→2", "0.5", "(0.5)"]
    assert format_comparison({}) == "no figure to compare"
