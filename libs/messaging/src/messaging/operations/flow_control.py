"""What a consumer's kill switch (messaging/operations/killswitch.py) decides, done on the broker.

    running  -> subscribed with the full prefetch
    paused   -> no subscription (basic.cancel): the messages wait in the work queue; after
                the cool-down, probing
    probing  -> subscribed with a prefetch of 1: the next message delivered is the probe

Every change is logged (one line, with the reason), counted and exported
(`consumer_state`). The state outlives a consumer that is rebuilt after a failed start:
the runtime owns this object and hands it to each consumer it makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from messaging.broker import STOP_STEP_SECONDS
from messaging.observability import metrics
from messaging.operations.killswitch import KillSwitch, Mode, Policy, Status

log = logging.getLogger(__name__)

OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]


class FlowControl:
    def __init__(self, service: str, policy: Policy | None = None, prefetch: int = 32):
        self.service = service
        self.switch = KillSwitch(policy or Policy())
        self._prefetch = prefetch
        self._lock = asyncio.Lock()
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._on_message: OnMessage | None = None
        self._tag: str | None = None
        self._tag_prefetch = 0
        self._timer: asyncio.Task[None] | None = None
        metrics.CONSUMER_STATE.labels(service).state(Mode.RUNNING.value)

    @property
    def subscribed(self) -> bool:
        return self._tag is not None

    @property
    def tag(self) -> str | None:
        """The consumer tag of the subscription now (None while paused)."""
        return self._tag

    @property
    def on_purpose(self) -> bool:
        """Not taking messages at full speed because the switch or an operator said so."""
        return self.switch.status.mode is not Mode.RUNNING

    def view(self) -> dict[str, Any]:
        """The state for people: /readyz, the pause/resume routes."""
        status = self.switch.status
        until = None
        if status.until is not None:
            wall = time.time() + (status.until - time.monotonic())
            until = datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")
        return {"state": status.mode.value, "by": status.by, "reason": status.reason,
                "until": until}

    async def attach(self, channel: AbstractChannel, queue: AbstractQueue,
                     on_message: OnMessage) -> None:
        """A consumer's channel and queue: subscribe as the current state says."""
        async with self._lock:
            self._channel, self._queue, self._on_message = channel, queue, on_message
            self._tag = None
            self.switch.release_probe()  # a probe taken on a channel now gone decides nothing
            await self._enact(self.switch.status)

    async def detach(self) -> None:
        """Stop taking messages for good (shutdown): bounded like every stop step."""
        if self._timer is not None:
            self._timer.cancel()
        async with self._lock:
            await self._unsubscribe()
            self._channel = self._queue = self._on_message = None

    def admit(self) -> bool:
        """A message was delivered: True when it is the probe."""
        return self.switch.admit()

    def release_probe(self) -> None:
        """The probe's message is settled; if that said nothing, the next one probes."""
        self.switch.release_probe()

    async def outcome(self, *, failed: bool, probe: bool, error: str = "") -> bool:
        """A handler's outcome (success, or a transient failure); True: a failure spends
        its retry budget as usual, False: it goes back to the work queue unspent."""
        verdict = self.switch.outcome(time.monotonic(), failed=failed, probe=probe,
                                      error=error)
        if verdict.change is not None:
            await self._changed(verdict.change)
        return verdict.spend

    async def pause(self, reason: str) -> dict[str, Any]:
        await self._changed(self.switch.pause(reason))
        return self.view()

    async def resume(self) -> dict[str, Any]:
        await self._changed(self.switch.resume())
        return self.view()

    async def _changed(self, status: Status) -> None:
        if status.mode is Mode.PAUSED:
            probe = f"; a probe in {status.cooldown:g}s" if status.until is not None else ""
            log.warning("%s consumer paused by the %s: %s%s", self.service, status.by,
                        status.reason, probe)
        elif status.mode is Mode.PROBING:
            log.warning("%s consumer probing: the next message decides", self.service)
        else:
            log.warning("%s consumer running", self.service)
        metrics.CONSUMER_STATE.labels(self.service).state(status.mode.value)
        if status.mode is Mode.PAUSED:
            metrics.CONSUMER_PAUSES.labels(self.service, status.by or "").inc()
        async with self._lock:
            # The state now, not `status`: another change may have come while we waited.
            await self._enact(self.switch.status)

    async def _enact(self, status: Status) -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
            self._timer = None
        if self._queue is None:
            return  # not attached yet: attach() enacts the state then
        if status.mode is Mode.RUNNING:
            await self._subscribe(self._prefetch)
        elif status.mode is Mode.PROBING:
            await self._subscribe(1)
        else:
            await self._unsubscribe()
            if status.until is not None:
                self._timer = asyncio.create_task(self._probe_at(status.until),
                                                  name=f"{self.service}-probe-timer")

    async def _probe_at(self, until: float) -> None:
        # The loop's clock (uvloop's is libuv's, in milliseconds) may wake us a hair before
        # `until` by time.monotonic(), which the switch decides by: sleep until it agrees.
        while (left := until - time.monotonic()) > 0:
            await asyncio.sleep(left + 0.001)
        status = self.switch.probe_due(time.monotonic())
        if status is not None:
            await self._changed(status)

    async def _subscribe(self, prefetch: int) -> None:
        if self._tag is not None and self._tag_prefetch == prefetch:
            return
        await self._unsubscribe()
        assert self._channel is not None and self._queue is not None
        assert self._on_message is not None
        # Prefetch per consumer (global=False): it applies to the subscription made next.
        await self._channel.set_qos(prefetch_count=prefetch)
        self._tag = await self._queue.consume(self._on_message)
        self._tag_prefetch = prefetch

    async def _unsubscribe(self) -> None:
        if self._tag is None or self._queue is None:
            self._tag = None
            return
        tag, self._tag = self._tag, None
        try:
            async with asyncio.timeout(STOP_STEP_SECONDS):
                await self._queue.cancel(tag)
        except TimeoutError:
            log.warning("%s: the broker did not answer the cancel within %.0fs",
                        self.service, STOP_STEP_SECONDS)
        except Exception:  # the channel may already be gone; closing it covers the rest
            log.debug("cancel failed", exc_info=True)

    async def close(self) -> None:
        """The probe timer ends with the service."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
