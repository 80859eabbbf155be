"""A consumer process for the crash tests: claim, handle, extend, ack, on RedisTransport.

    python tests/redis_consumer.py URL PREFIX GROUP TOPICS LEASE RUN_SECONDS

TOPICS is one topic or several, comma-separated (on a cluster: topics on several masters).

Every step is one line on stdout (flushed), which the test reads:

    ready
    claim <event id> <attempt>
    start <event id> <attempt>
    ack <event id> <attempt> <True|False>
    nack <event id> <attempt> <True|False>

How an event is handled depends on its body: ``hang`` hangs on the first attempt,
renewing the leases of everything this process holds (the test kills it there);
``pause`` sleeps without renewing, then tries nack and ack (the test stops it with
SIGSTOP meanwhile, so both are late); anything else takes a few milliseconds. The time comes
from the Redis server (no clock is injected). The process exits after RUN_SECONDS.
"""

from __future__ import annotations

import asyncio
import sys
import time

from broker_redis.transport import RedisTransport

MAX_COUNT = 5


def say(*words: object) -> None:
    print(*words, flush=True)


async def consume(
    url: str, prefix: str, group: str, topics: list[str], lease: float, run: float
) -> None:
    transport = RedisTransport(url, key_prefix=prefix, sweep_interval=0.2)
    await transport.connect()
    say("ready")
    end = time.monotonic() + run
    try:
        while time.monotonic() < end:
            msgs = await transport.claim(
                group, topics, max_count=MAX_COUNT, lease=lease, max_attempts=5
            )
            if not msgs:
                await transport.wait(group, topics, 0.5)
                continue
            for m in msgs:
                say("claim", m.event_id, m.attempt)
            for m in msgs:
                say("start", m.event_id, m.attempt)
                if m.body == b"hang" and m.attempt == 1:
                    while time.monotonic() < end:  # until SIGKILL
                        await transport.extend([x.receipt for x in msgs], lease)
                        await asyncio.sleep(lease / 4)
                    return
                if m.body == b"pause":
                    await asyncio.sleep(0.5)  # SIGSTOP arrives meanwhile
                    say("nack", m.event_id, m.attempt, await transport.nack(m.receipt))
                else:
                    await asyncio.sleep(0.003)
                say("ack", m.event_id, m.attempt, (await transport.ack([m.receipt]))[0])
    finally:
        await transport.close()


if __name__ == "__main__":
    url, prefix, group, topics, lease, run = sys.argv[1:7]
    asyncio.run(consume(url, prefix, group, topics.split(","), float(lease), float(run)))
