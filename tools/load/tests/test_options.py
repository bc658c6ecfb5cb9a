"""The load run's arguments: checked as read, and what Locust is asked to do."""

import argparse

import pytest

from load import options, retry
from load.cli import SCENARIO, locust_argv, parse

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("read", "text"), [
    (options.positive_float, "0"), (options.positive_float, "-1"),
    (options.positive_float, "nan"), (options.positive_float, "inf"),
    (options.positive_float, "fast"), (options.positive_int, "0"),
    (options.positive_int, "1.5"), (options.share, "1.1"), (options.share, "-0.1"),
    (options.share, "some"), (options.run_id, ""), (options.run_id, "a b"),
    (options.run_id, "x" * 41), (options.run_id, "run.1"),
])
def test_a_bad_value_is_refused_with_a_reason(read, text):
    with pytest.raises(argparse.ArgumentTypeError):
        read(text)


def test_good_values_are_read():
    assert (options.positive_float("2.5"), options.positive_int("3"), options.share("0"),
            options.run_id("demo_1-a")) == (2.5, 3, 0.0, "demo_1-a")


def test_a_new_run_id_can_stand_in_correlation_and_customer_ids():
    run = options.new_run_id()
    assert options.run_id(run) == run and run.startswith("load-")
    assert options.new_run_id() != run  # the random tail


def test_headless_by_default_for_the_duration_with_the_rest_passed_to_locust():
    args, rest = parse(["--users", "4", "--rate", "2", "--duration", "5s", "--refunds", "0.5"])
    argv = locust_argv(args, rest)
    assert argv[:3] == ["locust", "-f", str(SCENARIO)] and SCENARIO.is_file()
    assert " ".join(argv[3:]) == (
        "--host http://127.0.0.1:8000 --users 4 --spawn-rate 4 --rate 2.0 --stop-timeout 30s "
        "--headless --run-time 5s --only-summary --refunds 0.5")


def test_web_mode_serves_the_ui_on_8089_and_runs_until_stopped():
    args, rest = parse(["--web", "--web-host", "0.0.0.0", "--host", "http://payment:8000"])
    argv = locust_argv(args, rest)
    assert "--headless" not in argv and "--run-time" not in argv
    assert argv[argv.index("--web-port") + 1] == "8089"
    assert argv[argv.index("--web-host") + 1] == "0.0.0.0"


def test_retries_wait_for_retry_after_when_usable_else_a_doubling_pause():
    assert retry.pause_before(1, "2") == 2.0
    assert [retry.pause_before(n, None) for n in (1, 2, 3, 6, 9)] == [0.2, 0.4, 0.8, 5.0, 5.0]
    for unusable in ("soon", "-1", "nan", "3600", "Wed, 21 Oct 2026 07:28:00 GMT"):
        assert retry.pause_before(1, unusable) == 0.2, unusable
    assert {503, 0} <= retry.RETRYABLE and 500 not in retry.RETRYABLE
