"""Which of Prometheus's alerts the overview shows, from an `/api/v1/alerts` answer."""

from __future__ import annotations

import pytest

from console.alerts import firing_alerts

pytestmark = pytest.mark.unit


def answer(*alerts: dict) -> dict:
    return {"status": "success", "data": {"alerts": list(alerts)}}


def test_only_firing_alerts_are_shown_oldest_first_with_their_labels():
    shown = firing_alerts(answer(
        {"labels": {"alertname": "MiniEcDeadLetters", "severity": "warning",
                    "service": "mailer"}, "annotations": {"summary": "mailer: parked"},
         "state": "firing", "activeAt": "2026-12-07T14:05:00.5Z"},
        {"labels": {"alertname": "MiniEcOutboxLagHigh"}, "state": "pending",
         "activeAt": "2026-12-07T14:00:00Z"},
        {"labels": {"alertname": "MiniEcConsumerPaused", "severity": "warning",
                    "service": "points"}, "state": "firing",
         "activeAt": "2026-12-07T14:01:00Z"},
    ))
    assert [(a.name, a.severity, a.service) for a in shown] == [
        ("MiniEcConsumerPaused", "warning", "points"), ("MiniEcDeadLetters", "warning", "mailer")]
    assert shown[1].summary == "mailer: parked"
    assert shown[1].since is not None and shown[1].since.isoformat() == \
        "2026-12-07T14:05:00.500000+00:00"


def test_an_alert_without_severity_service_or_time_is_shown_with_blanks():
    [alert] = firing_alerts(answer({"labels": {"alertname": "Other"}, "state": "firing"}))
    assert (alert.severity, alert.service, alert.since, alert.summary) == ("", "", None, "")


@pytest.mark.parametrize("payload", [
    {}, [], {"status": "error", "data": {"alerts": []}}, {"status": "success", "data": {}},
    {"status": "success", "data": {"alerts": [{"state": "firing"}]}},
    {"status": "success", "data": {"alerts": "many"}},
])
def test_an_answer_that_is_not_the_alerts_api_is_refused(payload):
    with pytest.raises(ValueError, match="not an answer"):
        firing_alerts(payload)
