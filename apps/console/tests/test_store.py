"""The console's store on SQLite and PostgreSQL: one row per dead letter, groups, retention."""

from __future__ import annotations

from datetime import timedelta

import pytest

from console import store
from console.fingerprint import fingerprint
from contracts import utcnow

pytestmark = pytest.mark.integration


def incoming(event_id: str, failed_at, message: str = "no such customer 7",
             service: str = "points") -> store.Incoming:
    return store.Incoming(
        service=service, queue=f"{service}.events", event_id=event_id, event_type="OrderPaid",
        order_id="o-1", correlation_id="c-1", traceparent=None, error_class="permanent",
        error_type="ValueError", error_message=message,
        fingerprint=fingerprint(service, "permanent", "ValueError", "OrderPaid", message),
        title="t", headers={"error-class": "permanent"}, body=b"{}", content_type=None,
        content_encoding=None, published_at=None, failed_at=failed_at)


async def test_a_redelivered_copy_changes_nothing_and_a_later_failure_parks_again(sessions_for):
    sessions = await sessions_for(store.metadata)
    first = utcnow() - timedelta(minutes=5)
    assert await store.park(sessions, [incoming("e1", first)]) == 1
    [row] = await store.list_dead_letters(sessions, store.Filters())
    async with sessions() as session, session.begin():
        await store.archive(session, [row["id"]])

    assert await store.park(sessions, [incoming("e1", first)]) == 0  # the same failure again
    assert (await store.get_dead_letter(sessions, row["id"]))["status"] == "archived"

    later = utcnow()
    assert await store.park(sessions, [incoming("e1", later)]) == 1
    again = await store.get_dead_letter(sessions, row["id"])
    assert (again["status"], again["first_failed_at"], again["last_failed_at"]) == (
        "parked", first, later)


async def test_groups_count_by_fingerprint_and_leave_archived_ones_out(sessions_for):
    sessions = await sessions_for(store.metadata)
    now = utcnow()
    await store.park(sessions, [incoming("a", now, "no such customer 7"),
                                incoming("b", now, "no such customer 8"),
                                incoming("c", now, "disk full"),
                                incoming("d", now, "disk full", service="audit")])
    groups = {(g["service"], g["count"]) for g in await store.groups(sessions)}
    assert groups == {("points", 2), ("points", 1), ("audit", 1)}

    audit = next(g for g in await store.groups(sessions) if g["service"] == "audit")
    async with sessions() as session, session.begin():
        await store.archive(session, await store.ids_in_group_in(session, audit["id"]))
    assert {g["service"] for g in await store.groups(sessions)} == {"points"}


async def test_a_replay_marks_only_what_is_still_on_its_way(sessions_for):
    sessions = await sessions_for(store.metadata)
    await store.park(sessions, [incoming("a", utcnow()), incoming("b", utcnow())])
    ids = [r["id"] for r in await store.list_dead_letters(sessions, store.Filters())]
    async with sessions() as session, session.begin():
        assert sorted(await store.claim_for_replay(session, ids)) == sorted(ids)
        assert await store.claim_for_replay(session, ids) == []  # already on its way
    # One fails again while the replay runs: the ingest parks it anew.
    await store.park(sessions, [incoming("a", utcnow() + timedelta(seconds=1))])
    async with sessions() as session, session.begin():
        await store.mark_replayed(session, ids, utcnow())
    rows = {r["event_id"]: r for r in await store.list_dead_letters(sessions, store.Filters())}
    assert (rows["a"]["status"], rows["b"]["status"]) == ("parked", "replayed")
    assert rows["a"]["replay_count"] == rows["b"]["replay_count"] == 1


async def test_retention_deletes_old_replayed_and_archived_ones_and_keeps_parked_ones(
    sessions_for
):
    sessions = await sessions_for(store.metadata)
    old = utcnow() - timedelta(days=40)
    await store.park(sessions, [incoming(e, old) for e in ("parked", "archived", "replayed")]
                     + [incoming("recent", utcnow())])
    rows = {r["event_id"]: r["id"] for r in await store.list_dead_letters(sessions,
                                                                          store.Filters())}
    async with sessions() as session, session.begin():
        await store.archive(session, [rows["archived"], rows["recent"]])
        await store.claim_for_replay(session, [rows["replayed"]])
        await store.mark_replayed(session, [rows["replayed"]], utcnow())

    assert await store.forget_older_than(sessions, timedelta(days=30)) == 2
    left = {r["event_id"] for r in await store.list_dead_letters(sessions, store.Filters())}
    assert left == {"parked", "recent"}


async def test_a_replay_interrupted_by_a_stop_of_the_console_is_parked_again(sessions_for):
    sessions = await sessions_for(store.metadata)
    await store.park(sessions, [incoming("a", utcnow())])
    [row] = await store.list_dead_letters(sessions, store.Filters())
    async with sessions() as session, session.begin():
        await store.claim_for_replay(session, [row["id"]])
        job = await store.start_replay_job(session, "t", "u", 1.0, 1, 1)
    assert await store.recover(sessions) == 1
    assert (await store.get_dead_letter(sessions, row["id"]))["status"] == "parked"
    assert (await store.get_replay_job(sessions, job))["status"] == "interrupted"
