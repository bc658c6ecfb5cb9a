"""Edit & replay's check and diff (pure functions)."""

import json

import pytest

from console.edit import EditRefused, check_edit, diff
from devstack import events

pytestmark = pytest.mark.unit


def test_an_edited_body_that_keeps_the_contract_and_the_event_id_passes():
    event = events.order_paid()
    edited = json.loads(event.to_json())
    edited["data"]["email"] = "fixed@example.com"
    check_edit(str(event.event_id), json.dumps(edited).encode())


def test_a_body_that_breaks_the_contract_is_refused_with_the_field_named():
    event = events.order_paid()
    edited = json.loads(event.to_json())
    edited["data"]["amount"] = -5
    with pytest.raises(EditRefused, match=r"data\.amount"):
        check_edit(str(event.event_id), json.dumps(edited).encode())


def test_a_changed_event_id_is_refused():
    event = events.order_paid()
    edited = json.loads(event.to_json())
    edited["event_id"] = str(events.order_paid().event_id)
    with pytest.raises(EditRefused, match="event_id: must stay"):
        check_edit(str(event.event_id), json.dumps(edited).encode())


def test_a_body_that_is_not_json_is_refused():
    with pytest.raises(EditRefused, match="not UTF-8 JSON"):
        check_edit("x", b"{oops")


def test_the_diff_shows_the_changed_field_only():
    before = b'{"a": 1, "b": "old"}'
    after = b'{"b": "new", "a": 1}'
    changes = [line for line in diff(before, after).splitlines()
               if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert changes == ['-  "b": "old"', '+  "b": "new"']
