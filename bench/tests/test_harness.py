import asyncio
import math

import pytest

from bench.harness import (
    RateSchedule,
    Target,
    downsample_sorted,
    evaluate_target,
    evaluate_targets,
    format_table,
    lookup,
    percentile,
    rate_series,
    ratio_to_ceiling,
    run_at_rate,
    steady_rate,
    summarize,
)

pytestmark = pytest.mark.unit


# ---- percentiles ------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy_linear():
    data = list(range(1, 11))  # numpy.percentile(range(1, 11), q) for q = 50, 95, 99
    assert percentile(data, 50) == pytest.approx(5.5)
    assert percentile(data, 95) == pytest.approx(9.55)
    assert percentile(data, 99) == pytest.approx(9.91)
    assert percentile(data, 0) == 1
    assert percentile(data, 100) == 10


def test_percentile_of_one_value_is_that_value():
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_out_of_range(q):
    with pytest.raises(ValueError):
        percentile([1, 2], q)


def test_percentile_rejects_empty():
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_sorts_its_input():
    s = summarize([5, 1, 4, 2, 3, 100])
    assert s["count"] == 6
    assert s["min"] == 1 and s["max"] == 100
    assert s["p50"] == pytest.approx(3.5)
    assert s["mean"] == pytest.approx(115 / 6)
    assert s["p99"] == pytest.approx(5 + 95 * 0.95)


def test_summarize_empty_has_none_not_zero():
    s = summarize([])
    assert s["count"] == 0
    assert s["p99"] is None and s["max"] is None


def test_downsample_keeps_extremes_and_bounds_size():
    values = list(range(10_001))
    out = downsample_sorted(reversed(values), 101)
    assert len(out) == 101
    assert out[0] == 0 and out[-1] == 10_000
    assert out == sorted(out)
    assert out[50] == 5000
    assert downsample_sorted([3, 1, 2], 10) == [1.0, 2.0, 3.0]


# ---- rate limiter arithmetic ------------------------------------------------------------


def test_schedule_total_for_the_fixed_rate_scenario():
    assert RateSchedule(200, 30).total == 6000


def test_schedule_total_with_fractional_product():
    # due at 0, 0.4, 0.8 (1.2 is past the end)
    assert RateSchedule(2.5, 1).total == 3
    assert RateSchedule(3, 1).total == 3  # 0, 1/3, 2/3; 1.0 is not before the end


def test_due_at_spaces_sends_evenly():
    s = RateSchedule(200, 30)
    assert s.due_at(0) == 0
    assert s.due_at(1) == pytest.approx(0.005)
    assert s.due_at(5999) == pytest.approx(29.995)


def test_due_by_counts_sends_due_including_the_first():
    s = RateSchedule(200, 30)
    assert s.due_by(-0.1) == 0
    assert s.due_by(0) == 1
    assert s.due_by(0.0049) == 1
    assert s.due_by(0.005) == 2
    assert s.due_by(1.0) == 201
    assert s.due_by(10_000) == 6000  # never past the schedule


def test_due_by_is_consistent_with_due_at():
    s = RateSchedule(7, 3)
    for i in range(s.total):
        assert s.due_by(s.due_at(i)) == i + 1


def test_lag_is_zero_when_on_time_and_positive_when_late():
    s = RateSchedule(100, 1)
    assert s.lag(10, 0.05) == 0
    assert s.lag(10, 0.1) == 0
    assert s.lag(10, 0.125) == pytest.approx(0.025)


@pytest.mark.parametrize(("rate", "duration"), [(0, 1), (-1, 1), (1, 0), (math.nan, 1)])
def test_schedule_rejects_nonsense(rate, duration):
    with pytest.raises(ValueError):
        RateSchedule(rate, duration)


async def test_run_at_rate_sends_the_whole_schedule_and_counts_errors():
    seen = []

    async def send(i):
        seen.append(i)
        await asyncio.sleep(0)
        if i == 3:
            raise RuntimeError("boom")

    result = await run_at_rate(send, rate=200, duration=0.1)
    assert result.scheduled == result.sent == 20
    assert sorted(seen) == list(range(20))
    assert result.ok == 19 and result.errors == 1
    assert result.error_samples == ["RuntimeError: boom"]
    assert len(result.latencies_ms) == 19
    assert all(v >= 0 for v in result.latencies_ms)


async def test_run_at_rate_cancels_what_outlives_the_drain_timeout():
    async def send(i):
        if i == 0:
            await asyncio.Event().wait()  # never answers

    result = await run_at_rate(send, rate=100, duration=0.05, drain_timeout=0.05)
    assert result.sent == 5
    assert result.ok == 4 and result.errors == 1


# ---- rates ------------------------------------------------------------------------------


def test_rate_series_is_a_moving_window_rate():
    samples = [(0.0, 0), (0.5, 50), (1.0, 100), (1.5, 200), (2.0, 300)]
    series = rate_series(samples, window=1.0)
    assert series[0] == [0.5, 100.0]
    assert series[-1] == [2.0, 200.0]  # (300 - 100) / (2.0 - 1.0)


def test_steady_rate_skips_warmup_and_tail():
    samples = [(0.0, 0), (1.0, 10), (2.0, 110), (3.0, 210), (4.0, 310), (5.0, 311)]
    assert steady_rate(samples, skip_start=1.0, skip_end=1.0) == pytest.approx(100.0)
    assert steady_rate(samples[:1], skip_start=0) is None
    assert steady_rate(samples, skip_start=10) is None


# ---- targets ----------------------------------------------------------------------------

RESULTS = {
    "ceiling": {"rate": 1000.0},
    "saturation": {"rate": 400.0},
    "fixed_rate": {"latency_ms": {"post": {"p99": 42.0}, "e2e": {"p99": 800.0}}},
    "slow_mail": {
        "latency_ms": {
            "async_post": {"p50": 11.0},
            "async_post_normal": {"p50": 10.0},
            "sync_post": {"p50": 200.0},
        }
    },
}


def test_lookup_follows_dotted_paths():
    assert lookup(RESULTS, "fixed_rate.latency_ms.post.p99") == 42.0
    assert lookup(RESULTS, "fixed_rate.latency_ms.nope.p99") is None
    assert lookup(RESULTS, "ceiling.rate.deeper") is None


def test_target_met_and_missed():
    met = evaluate_target(Target("post", "fixed_rate.latency_ms.post.p99", "<", 50), RESULTS)
    missed = evaluate_target(Target("e2e", "fixed_rate.latency_ms.e2e.p99", "<", 500), RESULTS)
    assert (met.status, met.met, met.value) == ("met", True, 42.0)
    assert (missed.status, missed.met, missed.value) == ("missed", False, 800.0)


def test_target_relative_to_the_ceiling():
    t = Target("sat", "saturation.rate", ">=", 0.5, "%", relative_to="ceiling.rate")
    r = evaluate_target(t, RESULTS)
    assert r.value == pytest.approx(0.4)
    assert r.status == "missed"


def test_target_boundaries_are_inclusive_only_when_asked():
    ge = Target("sync", "slow_mail.latency_ms.sync_post.p50", ">=", 200)
    gt = Target("sync", "slow_mail.latency_ms.sync_post.p50", ">", 200)
    assert evaluate_target(ge, RESULTS).status == "met"
    assert evaluate_target(gt, RESULTS).status == "missed"
    within = Target(
        "async",
        "slow_mail.latency_ms.async_post.p50",
        "<=",
        1.2,
        relative_to="slow_mail.latency_ms.async_post_normal.p50",
    )
    assert evaluate_target(within, RESULTS).value == pytest.approx(1.1)
    assert evaluate_target(within, RESULTS).status == "met"


def test_target_without_data_is_not_run_never_met():
    results = {"ceiling": {"rate": 0.0}, "saturation": {"rate": 10.0}}
    absent = Target("x", "fixed_rate.latency_ms.post.p99", "<", 50)
    zero_ref = Target("sat", "saturation.rate", ">=", 0.5, relative_to="ceiling.rate")
    for r in evaluate_targets([absent, zero_ref], results):
        assert r.status == "not run"
        assert r.met is None


def test_target_rejects_unknown_operator():
    with pytest.raises(ValueError):
        Target("x", "a", "==", 1)


def test_ratio_to_ceiling():
    assert ratio_to_ceiling(500, 1000) == 0.5
    assert ratio_to_ceiling(None, 1000) is None
    assert ratio_to_ceiling(500, 0) is None


def test_table_shows_misses_ratios_and_not_run():
    targets = evaluate_targets(
        [
            Target("sat", "saturation.rate", ">=", 0.5, "%", relative_to="ceiling.rate"),
            Target("post", "fixed_rate.latency_ms.post.p99", "<", 50, "ms"),
            Target("rss", "service_resources.resources.payment.peak_rss_mb", "<", 150, "MB"),
        ],
        RESULTS,
    )
    table = format_table(
        [("ceiling", 1000.0), ("saturation", 400.0)],
        1000.0,
        [("payment", 1.5, 80.0)],
        targets,
        [("fixed_rate: post", summarize([1.0, 2.0, 3.0]))],
    )
    lines = table.splitlines()
    sat_row = next(line for line in lines if line.startswith("saturation"))
    assert "400 msg/s" in sat_row and "40.0 %" in sat_row
    assert "MISSED" in next(line for line in lines if line.startswith("sat "))
    assert next(line for line in lines if line.startswith("post ")).rstrip().endswith("met")
    assert next(line for line in lines if line.startswith("rss ")).rstrip().endswith("not run")
    assert "80.0 MB" in table
    lat_row = next(line for line in lines if line.startswith("fixed_rate: post"))
    assert lat_row.split()[2:5] == ["3", "2", "ms"]  # n, p50
