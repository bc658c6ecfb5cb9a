"""Which DLQs the console takes: the services CONSOLE_SERVICES names, else every consuming
service installed beside it; none at all stops it at start."""

from __future__ import annotations

import pytest

from console import main
from console.settings import Settings
from messaging import spec

pytestmark = pytest.mark.unit
CREDENTIALS = {"console_user": "operator", "console_password": "a-long-password"}


def test_the_named_services_are_watched_by_their_work_queues():
    settings = Settings(**CREDENTIALS, console_services="points,mailer")
    assert main.consuming_queues(settings) == {"points.events": "points",
                                               "mailer.events": "mailer"}


def test_without_names_every_installed_consuming_service_is_watched():
    installed = {s.consumes.queue: s.name for s in spec.consumers() if s.consumes}
    assert installed and main.consuming_queues(Settings(**CREDENTIALS)) == installed


def test_nothing_to_watch_stops_the_console_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(spec, "consumers", lambda: [])
    with pytest.raises(SystemExit) as stopped:
        main.consuming_queues(Settings(**CREDENTIALS))
    assert stopped.value.code == 2
    assert "CONSOLE_SERVICES" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["points mailer", "Points", "points,", ",points", "a;b"])
def test_a_malformed_list_is_a_bad_setting(value):
    with pytest.raises(ValueError, match="console_services"):
        Settings(**CREDENTIALS, console_services=value)
