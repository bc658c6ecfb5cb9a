"""The synchronous mode's settings: one prefixed port and database per service, checked at start."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from inprocess.settings import Settings


@pytest.mark.unit
def test_defaults_are_each_services_own_port_and_database(monkeypatch):
    for name in ("PAYMENT", "POINTS", "MAILER", "AUDIT"):
        monkeypatch.delenv(f"{name}_PORT", raising=False)
        monkeypatch.delenv(f"{name}_DATABASE_URL", raising=False)
    settings = Settings()

    assert [settings.port(s) for s in ("payment", "points", "mailer", "audit")] == [
        8000, 8001, 8002, 8003]
    assert settings.database_url("mailer") == "sqlite+aiosqlite:///var/mailer.db"


@pytest.mark.unit
def test_an_unsupported_database_url_is_refused():
    with pytest.raises(ValidationError, match="points_database_url"):
        Settings(points_database_url="mysql://localhost/points")


@pytest.mark.unit
def test_two_services_on_one_port_are_refused():
    with pytest.raises(ValidationError, match="8001 is already POINTS_PORT"):
        Settings(points_port=8001, mailer_port=8001)


@pytest.mark.integration
def test_a_bad_setting_stops_the_process_at_start_with_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "inprocess"], capture_output=True, text=True, timeout=60,
        env={"AUDIT_DATABASE_URL": "oracle://nowhere", "PATH": "/usr/bin:/bin"},
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "inprocess: invalid setting: AUDIT_DATABASE_URL: must start with one of "
        "sqlite+aiosqlite://, postgresql+asyncpg://"
    ]


@pytest.mark.integration
@pytest.mark.parametrize(("variable", "value", "says"), [
    ("EVENT_LOOP", "trio", "EVENT_LOOP: Input should be 'uvloop' or 'asyncio'"),
    ("OTEL_SQL_SPANS", "true", "OTEL_SQL_SPANS: Input should be 'on' or 'off'"),
    ("ORDER_PAID_VERSION", "3",
     "ORDER_PAID_VERSION: Input should be less than or equal to 2"),
])
def test_a_bad_process_setting_stops_the_process_at_start_naming_it(variable, value, says):
    result = subprocess.run(
        [sys.executable, "-m", "inprocess"], capture_output=True, text=True, timeout=60,
        env={variable: value, "PATH": "/usr/bin:/bin"},
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"inprocess: invalid setting: {says}"]
