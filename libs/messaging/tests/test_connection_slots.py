"""Who gets an HTTP connection slot, and the counted log of those who do not (pure logic;
the server and a real client: tests/api/test_connection_slots_http.py)."""

from __future__ import annotations

import pytest

from messaging.chassis.connection_slots import ConnectionSlots, Drop, Refuse, Serve
from messaging.chassis.log_tally import LogTally

pytestmark = pytest.mark.unit


def test_connections_are_served_while_there_is_room():
    slots: ConnectionSlots[str] = ConnectionSlots(capacity=8, client_share=1)
    assert [slots.admit(f"c{i}", "a") for i in range(8)] == [Serve()] * 8
    assert slots.open == 8


def test_at_the_cap_the_longest_idle_connection_makes_room():
    slots: ConnectionSlots[str] = ConnectionSlots(capacity=8, client_share=1)
    for i in range(8):
        slots.admit(f"c{i}", "a")
    slots.busy("c0")  # a request in progress: not idle
    slots.busy("c1")
    slots.idle("c1")  # its response went out: now the newest idle
    assert slots.admit("new", "b") == Serve(evict="c2")
    assert slots.admit("newer", "b") == Serve(evict="c3")
    assert slots.open == 8


def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused_then_dropped():
    slots: ConnectionSlots[str] = ConnectionSlots(capacity=8, client_share=1)
    for i in range(8):
        slots.admit(f"c{i}", "a")
        slots.busy(f"c{i}")
    refused = [slots.admit(f"r{i}", "b") for i in range(slots.overflow)]
    assert refused == [Refuse("over the cap")] * slots.overflow
    assert slots.admit("one-more", "b") == Drop("over the cap")
    slots.leave("r0")  # answered and closed: room to answer another
    assert slots.admit("again", "b") == Refuse("over the cap")
    slots.leave("c0")  # a slot is free again
    assert slots.admit("served", "b") == Serve()


def test_a_client_at_its_share_makes_room_among_its_own_idle_connections_only():
    slots: ConnectionSlots[str] = ConnectionSlots(capacity=8, client_share=0.5)
    assert slots.per_client == 4
    slots.admit("other", "b")  # idle longest, but another client's
    for i in range(4):
        slots.admit(f"a{i}", "a")
    assert slots.admit("a4", "a") == Serve(evict="a0")
    for conn in ("a1", "a2", "a3", "a4"):
        slots.busy(conn)
    assert slots.admit("a5", "a") == Refuse("over its client's share")
    assert slots.admit("b1", "b") == Serve()  # the other client is not held up


def test_a_closed_connection_frees_its_slot_once_even_when_reported_twice():
    slots: ConnectionSlots[str] = ConnectionSlots(capacity=8, client_share=0.5)
    for i in range(4):
        slots.admit(f"a{i}", "a")
    assert slots.admit("a4", "a") == Serve(evict="a0")
    slots.leave("a0")  # the evicted one's close arrives later: already gone
    slots.leave("a1")
    assert slots.open == 3
    assert slots.admit("a5", "a") == Serve()


def test_pressure_begins_at_three_quarters_of_the_slots():
    slots: ConnectionSlots[str] = ConnectionSlots(capacity=8, client_share=1)
    for i in range(5):
        slots.admit(f"c{i}", "a")
    assert not slots.under_pressure
    slots.admit("c5", "a")
    assert slots.under_pressure


def test_a_burst_is_logged_once_then_as_counts_by_kind_and_source():
    tally = LogTally()
    assert tally.add("answered 503 (over the cap)", "10.0.0.2") is True
    for _ in range(30):
        assert tally.add("answered 503 (over the cap)", "10.0.0.2") is False
    for _ in range(5):
        tally.add("idle closed to make room", "10.0.0.3")
    assert tally.summary() == ("35 more: 30 answered 503 (over the cap), "
                               "5 idle closed to make room; most from 10.0.0.2 (30)")
    assert tally.summary() is None  # the burst is over
    assert tally.add("answered 503 (over the cap)", "10.0.0.2") is True
