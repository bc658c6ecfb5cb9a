"""The console's settings for its neighbours: the consumers it steers, their token, the
Prometheus of its alerts; each refused with the setting named when it is malformed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from console.settings import Settings

pytestmark = pytest.mark.unit
CREDENTIALS = {"console_user": "operator", "console_password": "a-long-password"}


def test_service_urls_are_read_name_by_name_without_trailing_slashes():
    settings = Settings(**CREDENTIALS, console_service_urls=(
        "points=http://points:8001,mailer=http://127.0.0.1:8002/"))
    assert settings.service_urls == {"points": "http://points:8001",
                                     "mailer": "http://127.0.0.1:8002"}
    assert Settings(**CREDENTIALS).service_urls == {}


@pytest.mark.parametrize("value", [
    "mailer", "mailer=", "mailer=ftp://x", "mailer=http://a,", "Mailer=http://a",
    "mailer=http://a b", "mailer=http://a,mailer=http://b",
])
def test_malformed_service_urls_are_refused(value):
    with pytest.raises(ValidationError, match="console_service_urls"):
        Settings(**CREDENTIALS, console_service_urls=value)


def test_a_short_admin_token_is_refused_and_none_is_allowed():
    with pytest.raises(ValidationError, match="admin_token"):
        Settings(**CREDENTIALS, admin_token="short")
    assert Settings(**CREDENTIALS).admin_token is None
    token = Settings(**CREDENTIALS, admin_token="x" * 16).admin_token
    assert token is not None and token.get_secret_value() == "x" * 16


@pytest.mark.parametrize("value", ["prometheus:9090", "http://", "http://a b"])
def test_a_malformed_prometheus_url_is_refused(value):
    with pytest.raises(ValidationError, match="prometheus_url"):
        Settings(**CREDENTIALS, prometheus_url=value)
