"""The console's settings for its neighbours: the Prometheus of its alerts, refused with the
setting named when it is malformed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from console.settings import Settings

pytestmark = pytest.mark.unit
CREDENTIALS = {"console_user": "operator", "console_password": "a-long-password"}


@pytest.mark.parametrize("value", ["prometheus:9090", "http://", "http://a b"])
def test_a_malformed_prometheus_url_is_refused(value):
    with pytest.raises(ValidationError, match="prometheus_url"):
        Settings(**CREDENTIALS, prometheus_url=value)
