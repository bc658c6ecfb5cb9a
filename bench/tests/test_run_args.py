"""The runner's options: --label, --profile, --services-python."""

import sys

import pytest

from bench.harness import results_stem
from bench.run import main, parse_args


@pytest.mark.unit
def test_defaults():
    args = parse_args([])
    assert args.profile is False
    assert args.profile_rate == 100
    assert args.services_python == sys.executable
    assert args.label is None
    assert args.max_backlog == 200  # saturation: the rate the stack sustains


@pytest.mark.unit
@pytest.mark.parametrize("backlog", ["0", "-1", "many"])
def test_max_backlog_must_be_a_positive_whole_number(backlog, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--max-backlog", backlog])
    assert "a whole number > 0" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize("label", ["before", "after-2", "pg_1.5", "A"])
def test_label_accepted(label):
    assert parse_args(["--label", label]).label == label


@pytest.mark.unit
@pytest.mark.parametrize("label", ["", "../x", "a b", "-x", "x/y", "é", "x" * 65])
def test_label_refused_when_not_a_file_name_part(label, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([f"--label={label}"])  # "=": "-x" would read as an option
    assert exc.value.code == 2
    assert "a label is 1-64 letters" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize("rate", ["0", "-5", "ten", "2.5"])
def test_profile_rate_must_be_a_positive_whole_number(rate, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--profile-rate", rate])
    assert "a whole number > 0" in capsys.readouterr().err


@pytest.mark.unit
def test_results_stem_carries_the_label():
    assert results_stem(0) == "19700101T000000Z"
    assert results_stem(0, "before") == "19700101T000000Z-before"


@pytest.mark.integration
def test_services_python_that_cannot_run_the_services_stops_the_run(capsys):
    # checked before anything starts (no broker needed)
    assert main(["--services-python", "/bin/false", "--only", "saturation"]) == 2
    assert capsys.readouterr().err.startswith("--services-python: /bin/false: exited with 1")


@pytest.mark.unit
def test_the_quiet_scenarios_are_asked_for_not_run_by_default():
    args = parse_args([])
    assert "fixed_rates" not in args.only and "idle" not in args.only
    assert args.rates == "10,20,40"
    assert args.baseline_tree is None
    assert args.pairs == 2


@pytest.mark.unit
@pytest.mark.parametrize("rates", ["0", "10,ten", "0.5y", "10,10"])
def test_rates_that_do_not_parse_stop_the_run_before_it_starts(rates, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--rates", rates])
    assert "--rates" in capsys.readouterr().err


@pytest.mark.integration
def test_a_baseline_tree_without_an_environment_stops_the_run(tmp_path, capsys):
    assert main(["--baseline-tree", str(tmp_path), "--only", "fixed_rates"]) == 2
    assert capsys.readouterr().err.startswith("--baseline-tree: ")
