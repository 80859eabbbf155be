"""A consumer process for the crash tests: claim, handle, extend, ack, on PostgresTransport.

    python tests/postgres_consumer.py URL SCHEMA GROUP TOPIC LEASE RUN_SECONDS

Every step is one line on stdout (flushed), which the test reads:

    ready
    claim <event id> <attempt>
    start <event id> <attempt>
    ack <event id> <attempt> <True|False|error>
    nack <event id> <attempt> <True|False>
    down <operation>          (a TransportError: the server went away; it retries)

How an event is handled depends on its body: ``hang`` hangs on the first attempt,
renewing the leases of everything this process holds (the test kills it there);
``pause`` sleeps without renewing, then tries nack and ack (the test stops it with
SIGSTOP meanwhile, so both are late); anything else takes a few milliseconds. The time
comes from the PostgreSQL server (no clock is injected). The process exits after
RUN_SECONDS.
"""

from __future__ import annotations

import asyncio
import sys
import time

from broker_core import TransportError
from broker_postgres.transport import PostgresTransport

MAX_COUNT = 5


def say(*words: object) -> None:
    print(*words, flush=True)


async def consume(url: str, schema: str, group: str, topic: str, lease: float, run: float) -> None:
    transport = PostgresTransport(
        url, schema=schema, poll_interval=0.2, connect_timeout=1.0, command_timeout=5.0
    )
    await transport.connect()
    say("ready")
    end = time.monotonic() + run
    try:
        while time.monotonic() < end:
            try:
                msgs = await transport.claim(
                    group, [topic], max_count=MAX_COUNT, lease=lease, max_attempts=5
                )
                if not msgs:
                    await transport.wait(group, [topic], 0.5)
                    continue
            except TransportError:
                say("down", "claim")
                await asyncio.sleep(0.1)
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
                try:
                    [acked] = await transport.ack([m.receipt])
                except TransportError:
                    say("ack", m.event_id, m.attempt, "error")
                else:
                    say("ack", m.event_id, m.attempt, acked)
    finally:
        await transport.close()


if __name__ == "__main__":
    url, schema, group, topic, lease, run = sys.argv[1:7]
    asyncio.run(consume(url, schema, group, topic, float(lease), float(run)))
