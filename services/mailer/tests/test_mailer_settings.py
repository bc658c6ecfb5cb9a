"""The mailer's own settings are refused at start when they are not finite numbers."""

import pytest

from mailer.settings import Settings as MailerSettings
from messaging.chassis.settings import load_settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("variable", "value"), [("SMTP_TIMEOUT", "inf"),
                                                 ("SMTP_TIMEOUT", "-inf"), ("SMTP_TIMEOUT", "nan")])
def test_a_service_setting_that_is_not_finite_exits_2(monkeypatch, capsys, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_:
        load_settings(MailerSettings, "mailer")
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"mailer: invalid setting: {variable}: ")


def test_a_sender_address_with_a_line_break_exits_2(monkeypatch, capsys):
    """It would start a header of its own in every mail."""
    monkeypatch.setenv("MAIL_FROM", "Mini EC <shop@mini-ec.test>\r\nBcc: victim@example.com")
    with pytest.raises(SystemExit) as exit_:
        load_settings(MailerSettings, "mailer")
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("mailer: invalid setting: MAIL_FROM: ")
    assert "a line break" in line
