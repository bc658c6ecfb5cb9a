"""The chaos check in its short form (the full one is `make chaos`): payments and refunds
while every consumer is SIGKILLed and restarted and the broker is restarted once.

It restarts the local RabbitMQ application (`rabbitmqctl stop_app` / `start_app`): every
connection on the node drops for a few seconds, so it is marked `chaos` and deselectable
with `-m "not chaos"`."""

from __future__ import annotations

import pytest

from devstack import chaos

SHORT = chaos.ChaosConfig(payments=300, refund_ratio=0.10, seconds=20, kills_per_consumer=1,
                          broker_restarts=1, settle_timeout=90)


@pytest.mark.chaos
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_under_kills_and_a_broker_restart_nothing_is_lost_duplicated_or_unexpected(
    tmp_path, capsys
):
    report = chaos.run(SHORT, tmp_path)
    with capsys.disabled():
        print("\n" + report.table())
    assert report.kills == {"points": 1, "mailer": 1, "audit": 1}
    assert report.broker_restarts == 1
    assert report.settled
    for service, counts in report.counts.items():
        assert counts.expected == report.payments + report.refunds, service
        assert counts.ok, f"{service}: {counts}"


# The counting itself, on made-up observations: a check that cannot fail proves nothing.

EXPECTED = {
    "e1": {"type": "OrderPaid", "order_id": "o1", "sequence": 1, "delta": 12},
    "e2": {"type": "OrderRefunded", "order_id": "o1", "sequence": 2, "delta": -12},
    "e3": {"type": "OrderPaid", "order_id": "o2", "sequence": 1, "delta": 5},
}


def fits_points(want, got):
    return (got[0], got[1]) == (want["order_id"], want["delta"])


@pytest.mark.unit
def test_counting_sorts_effects_into_lost_duplicated_and_unexpected():
    effects = {
        "e1": [("o1", 12), ("o1", 12)],  # applied twice
        # e2 missing: lost
        "e3": [("o2", 6)],  # wrong amount: unexpected
        "zz": [("o9", 1)],  # nobody published it: unexpected
    }
    counts = chaos._categorise(EXPECTED, effects, fits_points)
    assert counts == chaos.Counts(expected=3, lost=1, duplicated=1, unexpected=2)
    assert not counts.ok


@pytest.mark.unit
def test_counting_everything_once_is_all_zero():
    effects = {"e1": [("o1", 12)], "e2": [("o1", -12)], "e3": [("o2", 5)]}
    counts = chaos._categorise(EXPECTED, effects, fits_points)
    assert counts == chaos.Counts(expected=3) and counts.ok


@pytest.mark.unit
def test_mail_resends_beyond_what_the_faults_can_explain_count_as_duplicated(tmp_path):
    from email.message import EmailMessage

    def deliver(message_id: str, n: int) -> None:
        for i in range(n):
            mail = EmailMessage()
            mail["Message-ID"] = message_id
            (tmp_path / f"{message_id.strip('<>')}.{i}.eml").write_bytes(mail.as_bytes())

    deliver("<e1@mini-ec>", 2 + chaos.IN_FLIGHT)  # 1 + IN_FLIGHT resends
    deliver("<e2@mini-ec>", 1)
    deliver("<stranger@mini-ec>", 1)
    counts, resent = chaos.smtp_counts(tmp_path, EXPECTED, faults=1)
    assert resent == 1 + chaos.IN_FLIGHT
    assert counts == chaos.Counts(expected=3, lost=1, duplicated=1, unexpected=1)
    counts, _ = chaos.smtp_counts(tmp_path, EXPECTED, faults=2)
    assert counts.duplicated == 0
    counts, _ = chaos.smtp_counts(tmp_path, EXPECTED, faults=0)  # no fault: no resend allowed
    assert counts.duplicated == 1 + chaos.IN_FLIGHT
