"""The chaos check in its short form (the full one is `make chaos`): payments and refunds
while every consumer is SIGKILLed and restarted, has its two broker connections closed
under it once (the mail server slow meanwhile), and the broker is restarted once.

It restarts the local RabbitMQ application (`rabbitmqctl stop_app` / `start_app`): every
connection on the node drops for a few seconds, so it is marked `chaos` and deselectable
with `-m "not chaos"`."""

from __future__ import annotations

import os

import pytest

from devstack import chaos

SHORT = chaos.ChaosConfig(payments=300, refund_ratio=0.10, seconds=20, kills_per_consumer=1,
                          connection_drops_per_consumer=1, broker_restarts=1, settle_timeout=90)


@pytest.mark.chaos
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_under_kills_and_a_broker_restart_nothing_is_lost_duplicated_or_unexpected(
    tmp_path, capsys
):
    report = chaos.run(SHORT, tmp_path)
    with capsys.disabled():
        print("\n" + report.table())
    assert report.kills == {"points": 1, "mailer": 1, "audit": 1, "shipping": 1}
    assert report.broker_restarts == 1
    assert report.connection_drops == len(chaos.CONSUMERS)
    assert report.settled
    paid, refunded = report.payments, report.refunds
    # Each payment is shipped once (no shipment for a refund); the mailer and audit also
    # handle each OrderShipped.
    expected = {"shipping (outbox)": paid, "shipping (shipments)": paid,
                "mailer (sent_mails)": 2 * paid + refunded,
                "audit (audit_log)": 2 * paid + refunded,
                "smtp sink (Message-ID)": 2 * paid + refunded}
    for service, counts in report.counts.items():
        assert counts.expected == expected.get(service, paid + refunded), service
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
    counts = chaos.categorise(EXPECTED, effects, fits_points)
    assert counts == chaos.Counts(expected=3, lost=1, duplicated=1, unexpected=2)
    assert not counts.ok


@pytest.mark.unit
def test_counting_everything_once_is_all_zero():
    effects = {"e1": [("o1", 12)], "e2": [("o1", -12)], "e3": [("o2", 5)]}
    counts = chaos.categorise(EXPECTED, effects, fits_points)
    assert counts == chaos.Counts(expected=3) and counts.ok


def deliver(directory, message_id: str, *at: float) -> None:
    """The SMTP sink received `message_id` once at each wall-clock time in `at`."""
    from email.message import EmailMessage

    for i, when in enumerate(at):
        mail = EmailMessage()
        mail["Message-ID"] = message_id
        path = directory / f"{message_id.strip('<>')}.{i}.eml"
        path.write_bytes(mail.as_bytes())
        os.utime(path, (when, when))


KILL = chaos.mailer_kill("SIGKILL mailer at 10.0s", 1010.0, 1010.5)
RESTART = chaos.connection_drop("broker restart at 20.0s", 1020.0, 1023.0)


@pytest.mark.unit
def test_mail_resends_after_a_mailer_kill_are_shown_on_that_kill_and_not_duplicated(tmp_path):
    deliver(tmp_path, "<e1@mini-ec>", 1009.0, 1012.0)  # sent, killed before the record, again
    deliver(tmp_path, "<e2@mini-ec>", 1005.0)
    deliver(tmp_path, "<e3@mini-ec>", 1006.0)
    counts, resends = chaos.smtp_counts(tmp_path, EXPECTED, [KILL, RESTART])
    assert counts == chaos.Counts(expected=3)
    assert resends.per_fault == {KILL: 1, RESTART: 0} and resends.unexplained == 0
    assert resends.total == 1
    report = chaos.Report(config=chaos.ChaosConfig(), seed=1, resends=resends)
    table = report.table()
    assert f"  SIGKILL mailer at 10.0s: 1 (may be up to {chaos.IN_FLIGHT})" in table
    assert "  broker restart at 20.0s: 0 (may be up to 0)" in table


@pytest.mark.unit
def test_a_mail_the_sink_saved_just_after_a_mailer_kill_and_its_resend_are_that_kills(tmp_path):
    # Written before the kill, read by the sink 1 s after the process was gone; resent when
    # the dead mailer's claim ran out.
    deliver(tmp_path, "<e1@mini-ec>", 1011.5, 1041.0)
    deliver(tmp_path, "<e2@mini-ec>", 1005.0)
    deliver(tmp_path, "<e3@mini-ec>", 1006.0)
    counts, resends = chaos.smtp_counts(tmp_path, EXPECTED, [KILL])
    assert resends.per_fault == {KILL: 1} and resends.unexplained == 0
    assert counts == chaos.Counts(expected=3)


@pytest.mark.unit
def test_a_mail_first_sent_well_after_a_mailer_kill_and_sent_again_is_duplicated(tmp_path):
    deliver(tmp_path, "<e1@mini-ec>", 1010.5 + chaos.SMTP_DRAIN_SECONDS + 1, 1041.0)
    deliver(tmp_path, "<e2@mini-ec>", 1005.0)
    deliver(tmp_path, "<e3@mini-ec>", 1006.0)
    counts, resends = chaos.smtp_counts(tmp_path, EXPECTED, [KILL])
    assert resends.unexplained == 1
    assert counts == chaos.Counts(expected=3, duplicated=1)


@pytest.mark.unit
def test_more_resends_after_a_kill_than_mails_in_flight_count_as_duplicated(tmp_path):
    for i in range(chaos.IN_FLIGHT + 1):
        deliver(tmp_path, f"<m{i}@mini-ec>", 1009.0, 1011.0)
    expected = {f"m{i}": EXPECTED["e1"] for i in range(chaos.IN_FLIGHT + 1)}
    counts, resends = chaos.smtp_counts(tmp_path, expected, [KILL])
    assert resends.per_fault == {KILL: chaos.IN_FLIGHT + 1}
    assert counts.duplicated == 1


@pytest.mark.unit
def test_a_mail_resent_after_a_dropped_connection_counts_as_duplicated(tmp_path):
    deliver(tmp_path, "<e1@mini-ec>", 1019.0, 1024.0)  # the broker restarted between the copies
    deliver(tmp_path, "<e2@mini-ec>", 1005.0)
    deliver(tmp_path, "<e3@mini-ec>", 1006.0)
    counts, resends = chaos.smtp_counts(tmp_path, EXPECTED, [KILL, RESTART])
    assert resends.per_fault == {KILL: 0, RESTART: 1}
    assert counts == chaos.Counts(expected=3, duplicated=1)


@pytest.mark.unit
def test_a_kill_explains_its_resend_even_when_a_broker_restart_came_before_it_arrived(tmp_path):
    # Sent just before the kill, sent again only after the broker restart that followed.
    deliver(tmp_path, "<e1@mini-ec>", 1009.0, 1025.0)
    deliver(tmp_path, "<e2@mini-ec>", 1005.0)
    deliver(tmp_path, "<e3@mini-ec>", 1006.0)
    counts, resends = chaos.smtp_counts(tmp_path, EXPECTED, [KILL, RESTART])
    assert resends.per_fault == {KILL: 1, RESTART: 0}
    assert counts.duplicated == 0


@pytest.mark.unit
def test_a_resend_with_no_fault_between_its_copies_counts_as_duplicated(tmp_path):
    deliver(tmp_path, "<e1@mini-ec>", 1030.0, 1031.0)  # after every fault
    deliver(tmp_path, "<e2@mini-ec>", 1001.0, 1002.0)  # before every fault
    deliver(tmp_path, "<stranger@mini-ec>", 1003.0)
    counts, resends = chaos.smtp_counts(tmp_path, EXPECTED, [KILL, RESTART])
    assert resends.unexplained == 2 and resends.total == 2
    assert counts == chaos.Counts(expected=3, lost=1, duplicated=2, unexpected=1)
