"""Group commit (messaging.speed.group_commit): what arrives while a group commits shares the
next one; a group that fails gives every caller None (each then does its item alone)."""

import asyncio
import contextvars

import pytest

from messaging.speed.group_commit import GroupCommit

pytestmark = pytest.mark.unit

caller = contextvars.ContextVar("caller", default="none")


class Committer:
    def __init__(self, fail=False):
        self.groups: list[list[int]] = []
        self.contexts: list[list[str]] = []
        self.fail = fail
        self.gate = asyncio.Event()

    async def __call__(self, items, contexts):
        self.groups.append(items)
        self.contexts.append([c.run(caller.get) for c in contexts])
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("rolled back")
        return [item * 10 for item in items]


submitted: list[int] = []


@pytest.fixture(autouse=True)
def nothing_submitted_yet():
    submitted.clear()


async def submit(group, item):
    caller.set(f"caller-{item}")
    submitted.append(item)  # in the same step as the submit's own bookkeeping
    return await group.submit(item)


async def until(condition, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


async def until_submitted(*items):
    await until(lambda: set(items) <= set(submitted))


async def test_items_arriving_while_a_group_commits_share_the_next_group_in_their_contexts():
    commit = Committer()
    group = GroupCommit(commit, max_group=8, name="test")
    assert await submit(group, 1) is None  # alone: a group of one is done by its caller
    held = [asyncio.create_task(submit(group, i)) for i in (2, 3)]
    await until(lambda: commit.groups == [[2, 3]])  # committing, held at the gate
    later = [asyncio.create_task(submit(group, i)) for i in (4, 5, 6)]
    await until_submitted(4, 5, 6)  # they arrived while [2, 3] commits
    commit.gate.set()
    assert await asyncio.gather(*held, *later) == [20, 30, 40, 50, 60]
    assert commit.groups == [[2, 3], [4, 5, 6]]
    assert commit.contexts == [["caller-2", "caller-3"], ["caller-4", "caller-5", "caller-6"]]
    await group.close()


async def test_a_failed_group_gives_each_caller_none():
    commit = Committer(fail=True)
    commit.gate.set()
    group = GroupCommit(commit, max_group=8, name="test")
    results = await asyncio.gather(*(submit(group, i) for i in (1, 2, 3)))
    assert results == [None, None, None]
    assert commit.groups == [[1, 2, 3]]
    await group.close()


async def test_max_group_caps_a_group():
    commit = Committer()
    commit.gate.set()
    group = GroupCommit(commit, max_group=2, name="test")
    results = await asyncio.gather(*(submit(group, i) for i in (1, 2, 3, 4)))
    assert results == [10, 20, 30, 40]
    assert commit.groups == [[1, 2], [3, 4]]
    await group.close()


async def test_a_caller_cancelled_before_its_group_starts_is_left_out():
    commit = Committer()
    group = GroupCommit(commit, max_group=8, name="test")
    held = [asyncio.create_task(submit(group, i)) for i in (1, 2)]
    await until(lambda: commit.groups == [[1, 2]])  # committing, held at the gate
    waiting = [asyncio.create_task(submit(group, i)) for i in (3, 4, 5)]
    await until_submitted(3, 4, 5)  # waiting for the next group while [1, 2] commits
    waiting[1].cancel()
    commit.gate.set()
    results = await asyncio.gather(*held, *waiting, return_exceptions=True)
    assert results[:3] == [10, 20, 30] and results[4] == 50
    assert isinstance(results[3], asyncio.CancelledError)
    assert commit.groups == [[1, 2], [3, 5]]
    await group.close()
