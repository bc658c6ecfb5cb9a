"""An event no retry can turn into a mail is a permanent error, and nothing is sent
(issue 27, finding 4: a Date past the year 9999 was retried four times as transient)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devstack import events, smtp_sink
from messaging.inbox import Outcome
from messaging.settlement import PermanentError

pytestmark = pytest.mark.integration


async def test_an_event_whose_date_no_mail_header_can_hold_is_permanent_and_sends_nothing(
    mailer,
):
    service, mail_dir = mailer
    # Past the contract's window, so only a hand-built event gets here (model_copy does
    # not validate): what a consumer would see if the contract let it through.
    unrenderable = events.order_paid().model_copy(
        update={"occurred_at": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)})

    with pytest.raises(PermanentError, match="cannot be written as a mail: ValueError"):
        await service.deliver(unrenderable)
    assert smtp_sink.mails_in(mail_dir) == []

    valid = events.order_paid()  # the mailer goes on with the next one
    assert await service.deliver(valid) is Outcome.APPLIED
    assert len(smtp_sink.mails_in(mail_dir)) == 1
