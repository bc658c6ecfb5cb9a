"""A points consumer whose handler kills its own process (SIGKILL) on any event of the
customer "crash", and otherwise appends the event id to a file. Test-only.

    python crashing_consumer.py AMQP_URL OUT_FILE

Prefetch 1: the message that kills it is the only one in flight, so only it is redelivered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aio_pika

from messaging.consumer import EventConsumer
from messaging.inbox import Outcome
from messaging.topology import QueueTopology

CRASH_CUSTOMER = "crash"


async def main(url: str, out: str) -> None:
    async def process(event) -> Outcome:
        if event.data.customer_id == CRASH_CUSTOMER:
            os.kill(os.getpid(), signal.SIGKILL)  # dies mid-message: no ack, no nack
        with open(out, "a") as f:
            f.write(f"{event.event_id}\n")
        return Outcome.APPLIED

    connection = await aio_pika.connect_robust(url)
    consumer = EventConsumer(service="points", topology=QueueTopology.for_service("points"),
                             connection=connection, process=process, prefetch=1)
    await consumer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await consumer.stop()
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
