"""Far from saturation: rates, CPU per payment, the machine's window, idle cost, tables."""

import pytest

from bench.quiet import (
    RateSpec,
    core_pct,
    cpu_deltas,
    format_idle,
    format_rates,
    machine_window,
    parse_rates,
    per_payment_ms,
    resolve_rate,
    switch_rates,
)

FIVE = ("payment", "points", "mailer", "audit", "shipping")


@pytest.mark.unit
def test_rates_are_payments_per_second_or_fractions_of_the_saturation():
    assert parse_rates("10, 20,0.5x,.25x") == [
        RateSpec(per_second=10), RateSpec(per_second=20), RateSpec(of_saturation=0.5),
        RateSpec(of_saturation=0.25),
    ]
    assert [s.label for s in parse_rates("10,2.5,0.5x")] == ["10", "2.5", "0.5x"]


@pytest.mark.unit
@pytest.mark.parametrize("text", ["", "0", "10,,20", "-5", "x", "10/s", "0x", "10,10"])
def test_a_rate_that_is_not_a_positive_number_or_fraction_is_refused(text):
    with pytest.raises(ValueError):
        parse_rates(text)


@pytest.mark.unit
def test_a_fraction_resolves_against_the_saturation_rate():
    assert resolve_rate(RateSpec(per_second=12.5), None) == 12.5
    assert resolve_rate(RateSpec(of_saturation=0.5), 81.3) == 40.6
    with pytest.raises(ValueError, match="--saturation-rate"):
        resolve_rate(RateSpec(of_saturation=0.5), None)


@pytest.mark.unit
def test_cpu_deltas_keep_processes_read_both_times_and_never_go_negative():
    before = {"payment": 1.0, "points": 2.0, "gone": 1.0}
    after = {"payment": 1.5, "points": 1.9, "new": 3.0}
    assert cpu_deltas(before, after) == {"payment": 0.5, "points": 0.0}


@pytest.mark.unit
def test_cpu_per_payment_in_ms_with_the_five_services_added_up():
    cpu = {s: 0.1 for s in FIVE} | {"rabbitmq (beam.smp)": 0.2}
    out = per_payment_ms(cpu, 50)
    assert out["payment"] == 2.0
    assert out["rabbitmq (beam.smp)"] == 4.0
    assert out["services"] == 10.0  # the broker is not a service
    assert per_payment_ms(cpu, 0) == {}


@pytest.mark.unit
def test_machine_window_separates_the_stack_from_other_work():
    # 10 s on 2 cores, 8 busy CPU s of which the monitored processes used 3, 100 payments
    m = machine_window(busy_s=8.0, wall_s=10.0, cpus=2, monitored_s=3.0, payments=100)
    assert m["busy_share"] == 0.4
    assert m["other_cpu_s"] == 5.0
    assert m["other_share"] == 0.25
    assert m["ms_per_payment"] == 80.0
    assert m["stack_ms_per_payment"] == 30.0
    assert machine_window(8.0, 10.0, 2, 3.0, 0)["ms_per_payment"] is None


@pytest.mark.unit
def test_machine_busy_share_is_capped_at_one_since_kernel_ticks_overshoot():
    assert machine_window(busy_s=2.1, wall_s=1.0, cpus=2, monitored_s=0, payments=1)[
        "busy_share"] == 1.0


@pytest.mark.unit
def test_idle_cost_is_a_share_of_one_core():
    out = core_pct({"payment": 0.1, "mailer": 0.04, "smtp sink": 0.02}, 20.0)
    assert out == {"payment": 0.5, "mailer": 0.2, "smtp sink": 0.1, "services": 0.7}
    with pytest.raises(ValueError):
        core_pct({}, 0)


@pytest.mark.unit
def test_context_switches_per_payment_split_voluntary_from_involuntary():
    before = {"points": (100, 10), "gone": (1, 1)}
    after = {"points": (160, 12)}
    assert switch_rates(before, after, 20) == {
        "voluntary": {"points": 3.0}, "involuntary": {"points": 0.1}}
    assert switch_rates(before, after, 0) == {"voluntary": {}, "involuntary": {}}


def _rate_result(rate: float) -> dict:
    return {
        "offered_rate": rate,
        "cpu_ms_per_payment": {**{s: 5.0 for s in FIVE}, "services": 25.0,
                               "rabbitmq (beam.smp)": 6.0, "smtp sink": 1.5},
        "machine": machine_window(6.0, 10.0, 2, 4.0, 100),
        "latency": {"post": {"p50": 5.5, "p99": 12.0}, "e2e": {"p50": 60.0, "p99": 90.0}},
        "loadavg_1m": 1.25,
        "switches_per_payment": {"voluntary": {"points": 7.5}, "involuntary": {}},
    }


@pytest.mark.unit
def test_rates_table_has_a_column_per_rate_and_a_row_per_process():
    table = format_rates({"rates": {"10": _rate_result(10), "20": _rate_result(20)}})
    lines = table.splitlines()
    assert lines[0].split() == ["offered", "/s", "10", "20"]
    assert [ln.split()[0] for ln in lines[1:6]] == list(FIVE)
    assert any(ln.startswith("smtp sink") and ln.split()[-1] == "1.50" for ln in lines)
    assert any(ln.startswith("machine ms/payment") and ln.split()[-1] == "60.0"
               for ln in lines)
    assert any(ln.startswith("e2e p50 / p99 ms") and ln.split()[-1] == "60/90" for ln in lines)
    assert any(ln.startswith("points sleeps/payment") and ln.split()[-1] == "7.5"
               for ln in lines)


@pytest.mark.unit
def test_idle_table_shows_each_process_and_the_machine():
    result = {
        "core_pct": core_pct({"payment": 0.1, "smtp sink": 0.0}, 20.0),
        "machine": {"busy_share": 0.05, "other_share": 0.01},
        "loadavg_1m": 0.5,
        "switches_per_second": {"voluntary": {"payment": 12.0}, "involuntary": {}},
    }
    table = {ln.rsplit(None, 1)[0].strip(): ln.rsplit(None, 1)[1]
             for ln in format_idle(result).splitlines()}
    assert table["payment"] == "0.500"
    assert table["services"] == "0.500"
    assert table["audit"] == "-"
    assert table["payment sleeps/s"] == "12.0"
