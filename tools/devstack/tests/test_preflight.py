"""`make test`'s preflight: each missing prerequisite is one line naming what to do, and exit 1.

The path that enables the management plugin is proven by `.ci/run`, which disables the plugin
before it runs `make test` as a new user would."""

from __future__ import annotations

import pytest

from devstack import preflight, throwaway
from devstack.stack import free_port


@pytest.fixture
def closed_port() -> int:
    return free_port()  # nothing listens there once free_port has closed its probe socket


@pytest.mark.integration
def test_a_broker_that_does_not_answer_is_one_line_naming_the_address(monkeypatch, closed_port):
    monkeypatch.setattr(throwaway, "AMQP_HOST", f"127.0.0.1:{closed_port}")
    with pytest.raises(preflight.PreflightError, match=f"127.0.0.1:{closed_port}"):
        preflight.check_broker()


@pytest.mark.integration
def test_the_running_broker_and_its_management_api_pass():
    preflight.check_broker()
    preflight.ensure_management(say=pytest.fail)  # answers already: nothing to enable


@pytest.mark.integration
def test_a_management_api_it_cannot_enable_names_the_command(monkeypatch, closed_port):
    monkeypatch.setattr(throwaway, "MANAGEMENT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(preflight.shutil, "which", lambda name: None)  # no rabbitmq-plugins here
    with pytest.raises(preflight.PreflightError) as raised:
        preflight.ensure_management(say=pytest.fail)
    assert "rabbitmq-plugins enable rabbitmq_management" in str(raised.value)


@pytest.mark.integration
def test_a_remote_broker_is_never_changed_only_named(monkeypatch, closed_port):
    monkeypatch.setattr(throwaway, "MANAGEMENT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(throwaway, "AMQP_HOST", "broker.example:5672")
    with pytest.raises(preflight.PreflightError, match="enable it on the broker"):
        preflight.ensure_management(say=pytest.fail)


@pytest.mark.integration
@pytest.mark.parametrize("where", ["closed port", "no such database"])
def test_postgres_unreachable_or_without_the_database_is_one_line(monkeypatch, closed_port, where):
    url = (
        f"postgresql://postgres@127.0.0.1:{closed_port}/test"
        if where == "closed port"
        else "postgresql://postgres@127.0.0.1:5432/no_such_database_here"
    )
    monkeypatch.setattr(throwaway, "POSTGRES_ADMIN_URL", url)
    with pytest.raises(preflight.PreflightError, match="PostgreSQL is not reachable"):
        preflight.check_postgres()


@pytest.mark.integration
def test_main_prints_one_line_and_exits_1(monkeypatch, closed_port, capsys):
    monkeypatch.setattr(throwaway, "AMQP_HOST", f"127.0.0.1:{closed_port}")
    assert preflight.main() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("make test: RabbitMQ does not answer")
