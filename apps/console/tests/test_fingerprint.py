"""Grouping: what makes two failures one problem."""

import pytest

from console.fingerprint import fingerprint, normalise, title

pytestmark = pytest.mark.unit


def test_ids_numbers_and_addresses_are_taken_out_of_the_message():
    one = normalise("order 1b4e28ba-2fa1-11d2-883f-0016d3cca427 refused by mx1: 451 after 3 tries"
                    " to bob@example.com")
    assert one == "order <id> refused by mx<n>: <n> after <n> tries to <address>"


def test_the_same_problem_on_other_orders_is_one_group():
    a = fingerprint("mailer", "exhausted", "SMTPDataError", "OrderPaid",
                    "(451, b'try again later') for order 7f3c2a1b9d8e")
    b = fingerprint("mailer", "exhausted", "SMTPDataError", "OrderPaid",
                    "(451, b'try again later') for order 91ab44cd0e12")
    assert a == b and len(a) == 16


@pytest.mark.parametrize("other", [
    ("points", "exhausted", "SMTPDataError", "OrderPaid", "try again later"),
    ("mailer", "poison", "SMTPDataError", "OrderPaid", "try again later"),
    ("mailer", "exhausted", "TimeoutError", "OrderPaid", "try again later"),
    ("mailer", "exhausted", "SMTPDataError", "OrderShipped", "try again later"),
    ("mailer", "exhausted", "SMTPDataError", "OrderPaid", "mailbox full"),
])
def test_service_class_type_event_type_and_message_each_make_another_group(other):
    base = fingerprint("mailer", "exhausted", "SMTPDataError", "OrderPaid", "try again later")
    assert fingerprint(*other) != base


def test_a_title_says_service_error_event_type_and_message():
    assert title("mailer", "exhausted", "SMTPDataError", "OrderPaid", "451 try again") == (
        "mailer: SMTPDataError (exhausted) on OrderPaid: <n> try again")
