"""The console benchmark's smoke run: a few dead letters, a few requests (no figures)."""

import pytest

from bench import console

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def test_a_small_run_stores_every_dead_letter_and_times_both_pages():
    result = console.run(count=40, requests=3, database_url=None)
    assert result["dead_letters"] == 40
    assert result["groups"] > 4  # spread over services and failures
    assert result["ingest_per_second"] > 0
    for page in ("groups_page", "groups_api"):
        assert 0 < result[page]["p50_ms"] <= result[page]["p95_ms"]


def test_bad_arguments_are_refused_in_one_line(capsys):
    assert console.main(["--dead-letters", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
