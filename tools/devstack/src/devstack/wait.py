"""Waiting by polling with a deadline: the only way tests and tools wait for something."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition not met") -> T:
    """Poll `check` until it returns something truthy, and return that; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{message} within {timeout}s (last value: {last!r})")


async def eventually_async(check: Callable[[], Awaitable[T]], timeout: float = 10.0,
                           interval: float = 0.05, message: str = "condition not met") -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{message} within {timeout}s (last value: {last!r})")


async def only_this_task_left(timeout: float = 5.0, interval: float = 0.05) -> None:
    """Poll until the calling task is the event loop's only one: whatever a component started
    must have ended with its stop. Fails naming the tasks that outlived it."""
    me = asyncio.current_task()
    deadline = time.monotonic() + timeout
    while True:
        others = [task for task in asyncio.all_tasks() if task is not me]
        if not others:
            return
        if time.monotonic() >= deadline:
            names = [f"{task.get_name()}: {task.get_coro().__qualname__}" for task in others]
            raise AssertionError(f"tasks still running {timeout}s after the stop: {names}")
        await asyncio.sleep(interval)
