"""Which effects an accepted payment must have, and how a difference is named."""

import pytest

from load.effects import REFUND, SHIPPED, THANK_YOU, Payment, Seen, expected, mismatches

pytestmark = pytest.mark.unit

PAID = Payment(order_id="o-1", customer_id="c-1", amount=1250, correlation_id="load-x-1")
COMPLETE = Seen(points=(("order paid", 12),), mails=(SHIPPED, THANK_YOU),
                audit=("OrderShipped", "OrderPaid"), shipments=("shipped",))


def test_a_paid_order_is_complete_with_its_points_two_mails_two_audit_records_and_a_shipment():
    assert mismatches(PAID, COMPLETE) == []  # in any order


def test_a_refunded_order_also_needs_the_points_back_the_refund_mail_and_a_return():
    refunded = Payment(**{**PAID.__dict__, "refunded": True})
    assert mismatches(refunded, COMPLETE) == [
        "missing points ('order refunded', -12)", f"missing mails {REFUND}",
        "missing audit OrderRefunded", "missing shipments return_requested",
        "extra shipments shipped"]
    assert mismatches(refunded, expected(refunded)) == []


def test_nothing_yet_names_every_missing_effect():
    assert mismatches(PAID, Seen((), (), (), ())) == [
        "missing points ('order paid', 12)", f"missing mails {THANK_YOU}",
        f"missing mails {SHIPPED}", "missing audit OrderPaid", "missing audit OrderShipped",
        "missing shipments shipped"]


def test_an_effect_applied_twice_is_named_as_extra():
    twice = Seen(points=COMPLETE.points * 2, mails=COMPLETE.mails + (THANK_YOU,),
                 audit=COMPLETE.audit, shipments=COMPLETE.shipments)
    assert mismatches(PAID, twice) == [
        "extra points ('order paid', 12)", f"extra mails {THANK_YOU}"]
