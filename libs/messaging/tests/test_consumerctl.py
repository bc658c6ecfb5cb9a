"""`python -m messaging.operations.consumerctl`: what it refuses before calling a service,
and a service that does not answer (the calls themselves:
tests/e2e_failure/test_kill_switch_e2e.py)."""

from __future__ import annotations

import pytest

from devstack.stack import free_port
from messaging.operations import consumerctl

pytestmark = pytest.mark.unit


def test_an_unknown_service_or_one_that_consumes_nothing_is_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("ADMIN_TOKEN", "t" * 20)
    assert consumerctl.main(["status", "nosuch"]) == 2
    assert "unknown service 'nosuch'" in capsys.readouterr().err
    assert consumerctl.main(["resume", "payment"]) == 2
    assert "payment consumes no events" in capsys.readouterr().err


def test_pause_without_a_reason_or_a_token_is_refused_before_any_call(capsys, monkeypatch):
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_:
        consumerctl.main(["pause", "mailer"])
    assert exit_.value.code == 2 and "pause needs --reason" in capsys.readouterr().err
    assert consumerctl.main(["resume", "mailer", "--url", "http://127.0.0.1:1"]) == 2
    assert "ADMIN_TOKEN is not set" in capsys.readouterr().err


def test_a_service_that_does_not_answer_is_exit_1_in_one_line(capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert consumerctl.main(["status", "mailer", "--url", url]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"consumerctl: {url} unreachable: ")
