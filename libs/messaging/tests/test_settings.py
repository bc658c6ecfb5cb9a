"""A missing or malformed setting stops a service at start with one line naming it."""

import subprocess
import sys

import pytest

from messaging.chassis.settings import ConsumerSettings, ServiceSettings, load_settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PORT", "abc", "PORT: Input should be a valid integer"),
        ("PORT", "70000", "PORT: Input should be less than or equal to 65535"),
        ("DATABASE_URL", "mysql://x/db", "DATABASE_URL: must start with one of"),
        ("DATABASE_URL", "postgresql+asyncpg://u@h:xx/db", "DATABASE_URL: is not a valid URL"),
        ("DATABASE_URL", "postgresql+asyncpg://u@h:99999/db", "port 99999 is out of range"),
        ("RABBITMQ_URL", "http://localhost/", "RABBITMQ_URL: must be an amqp://"),
        ("RABBITMQ_URL", "amqp://g:g@host:notaport/", "RABBITMQ_URL: is not a valid URL"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL: String should match pattern"),
        ("RETRY_DELAYS", "1,x", "RETRY_DELAYS: must be comma-separated whole seconds"),
        ("RETRY_DELAYS", "5,5", "RETRY_DELAYS: must be one or more distinct"),
        ("PREFETCH", "0", "PREFETCH: Input should be greater than or equal to 1"),
        ("INBOX_RETENTION_HOURS", "inf", "INBOX_RETENTION_HOURS: Input should be a finite"),
        ("INBOX_RETENTION_HOURS", "nan", "INBOX_RETENTION_HOURS: Input should be a finite"),
        ("RETRY_DELAYS", "1,,5", "RETRY_DELAYS: must be comma-separated whole seconds"),
        ("RETRY_DELAYS", "1,5,", "RETRY_DELAYS: must be comma-separated whole seconds"),
        ("DATABASE_URL", "sqlite+aiosqlite:///", "DATABASE_URL: names no SQLite file"),
        ("DATABASE_URL", "sqlite+aiosqlite:///:memory:", "DATABASE_URL: names no SQLite file"),
        ("HOST", "256.1.1.1", "HOST: '256.1.1.1' is neither an IP address nor a host name"),
        ("HOST", "bad host", "HOST: 'bad host' is neither"),
        ("HTTP_MAX_BODY_BYTES", "10", "HTTP_MAX_BODY_BYTES: Input should be greater than"),
        ("HTTP_HEADER_TIMEOUT_SECONDS", "inf", "HTTP_HEADER_TIMEOUT_SECONDS: Input should be"),
        ("HTTP_CLIENT_CONNECTION_SHARE", "0", "HTTP_CLIENT_CONNECTION_SHARE: Input should be "
         "greater than 0"),
        ("HTTP_CLIENT_CONNECTION_SHARE", "1.5", "HTTP_CLIENT_CONNECTION_SHARE: Input should be "
         "less than or equal to 1"),
        ("HTTP_CLIENT_CONNECTION_SHARE", "nan", "HTTP_CLIENT_CONNECTION_SHARE: Input should be"),
        ("EVENT_LOOP", "trio", "EVENT_LOOP: Input should be 'uvloop' or 'asyncio'"),
        ("OTEL_SQL_SPANS", "yes", "OTEL_SQL_SPANS: Input should be 'on' or 'off'"),
        ("OTEL_SQL_SPANS", "", "OTEL_SQL_SPANS: Input should be 'on' or 'off'"),
        ("SPEED_LAYER", "fast", "SPEED_LAYER: Input should be 'on' or 'off'"),
        ("KILL_SWITCH_FAILURE_RATIO", "0", "KILL_SWITCH_FAILURE_RATIO: Input should be greater"),
        ("KILL_SWITCH_FAILURE_RATIO", "1.5", "KILL_SWITCH_FAILURE_RATIO: Input should be less"),
        ("KILL_SWITCH_MIN_MESSAGES", "0", "KILL_SWITCH_MIN_MESSAGES: Input should be greater"),
        ("KILL_SWITCH_WINDOW_SECONDS", "nan", "KILL_SWITCH_WINDOW_SECONDS: Input should be a"),
        ("KILL_SWITCH_MAX_COOLDOWN_SECONDS", "2",
         "KILL_SWITCH_MAX_COOLDOWN_SECONDS: must be at least KILL_SWITCH_COOLDOWN_SECONDS"),
        ("ADMIN_TOKEN", "short", "ADMIN_TOKEN: must be 16-256 characters"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line_naming_it(monkeypatch, capsys, variable, value, says):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_:
        load_settings(ConsumerSettings, "points")
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("points: invalid setting: ")
    assert says in line


def test_the_speed_layer_is_on_unless_the_setting_turns_it_off(monkeypatch):
    monkeypatch.delenv("SPEED_LAYER", raising=False)
    assert ServiceSettings().speed
    monkeypatch.setenv("SPEED_LAYER", "off")
    assert not ServiceSettings().speed


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0", "localhost", "payment",
                                  "svc-1.internal"])
def test_a_host_name_or_address_is_accepted(monkeypatch, host):
    monkeypatch.setenv("HOST", host)
    assert load_settings(ServiceSettings, "points").host == host


def test_a_service_overriding_a_default_keeps_the_url_checks(monkeypatch, capsys):
    class Overriding(ServiceSettings):
        database_url: str = "sqlite+aiosqlite:///var/other.db"

    monkeypatch.setenv("DATABASE_URL", "mysql://x/db")
    with pytest.raises(SystemExit):
        load_settings(Overriding, "other")
    assert "DATABASE_URL" in capsys.readouterr().err


def test_retry_delays_parse_from_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("RETRY_DELAYS", "2, 10,60")
    assert load_settings(ConsumerSettings, "points").retry_delays == (2, 10, 60)


@pytest.mark.parametrize("service", ["payment", "points", "mailer", "audit"])
def test_each_service_process_stops_at_start_on_a_bad_setting(service):
    result = subprocess.run(
        [sys.executable, "-m", service], env={"PATH": "", "PORT": "not-a-port"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"{service}: invalid setting: PORT: Input should be a valid integer, "
        "unable to parse string as an integer"
    )


def test_mailer_refuses_a_sender_that_is_no_address(monkeypatch, capsys):
    from mailer.settings import Settings

    monkeypatch.setenv("MAIL_FROM", "nobody")
    with pytest.raises(SystemExit):
        load_settings(Settings, "mailer")
    assert "MAIL_FROM: must be a mail address" in capsys.readouterr().err


def test_the_kill_switch_policy_comes_from_the_settings_and_the_token_stays_secret(monkeypatch):
    monkeypatch.setenv("KILL_SWITCH_MIN_MESSAGES", "20")
    monkeypatch.setenv("KILL_SWITCH_MAX_COOLDOWN_SECONDS", "120")
    monkeypatch.setenv("ADMIN_TOKEN", "a-token-of-twenty-chars")
    settings = load_settings(ConsumerSettings, "points")
    assert settings.kill_switch.min_messages == 20
    assert settings.kill_switch.max_cooldown_seconds == 120
    assert settings.kill_switch.cooldown_seconds == 5  # the default
    assert "a-token-of-twenty-chars" not in repr(settings)
