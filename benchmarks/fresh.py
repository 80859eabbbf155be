"""Drains timed from the start of a fresh process, as a user's service starts.

The runner queues the events, notes ``time.monotonic()`` and spawns
``python -m benchmarks.fresh <who> <url> <n> [options]``; the child starts the
interpreter, imports what it needs, connects, drains ``n`` events and prints the
monotonic time of its last ack as one JSON line. The figure is ``n`` over that span:
interpreter start, imports, connecting and loading scripts included, as a new consumer
process pays them. (``time.monotonic`` is one clock for every process of a host.)

Contenders: ``ours`` (with our default options unless ``--concurrency``/``--prefetch``
are given, and ``--loop asyncio|uvloop``), ``raw`` (the raw leased worker of
:mod:`benchmarks.raw`) and ``dramatiq`` (its tuned worker, :mod:`benchmarks.dramatiq_baseline`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["spawn"]

_ROOT = Path(__file__).resolve().parent.parent


async def spawn(who: str, url: str, n: int, *options: str, timeout: float) -> float:
    """Run a fresh drain of ``n`` queued events; events/s from spawn to the last ack."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    start = time.monotonic()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.fresh",
        who,
        url,
        str(n),
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await child.communicate()
    except TimeoutError:
        child.kill()
        await child.wait()
        raise
    if child.returncode != 0:
        raise RuntimeError(f"fresh {who} drain failed ({child.returncode}): {err.decode()[-2000:]}")
    finished = float(json.loads(out.decode().strip().splitlines()[-1])["finished_at"])
    return n / (finished - start)


async def _ours(url: str, n: int, args: argparse.Namespace) -> float:
    from benchmarks.ours import consumer, run_until_acked
    from benchmarks.payload import TOPIC, BenchEvent

    options: dict[str, Any] = {}
    if args.concurrency is not None:
        options["concurrency"] = args.concurrency
    if args.prefetch is not None:
        options["prefetch"] = args.prefetch
    broker, counter = consumer(url, **options)

    @broker.on(BenchEvent)
    async def noop(event: BenchEvent) -> None:
        pass

    async with broker:
        await broker.subscribe(TOPIC)
        await run_until_acked(broker, counter, n)
    return counter.finished_monotonic


async def _raw(url: str, n: int) -> float:
    from benchmarks.raw import _client, leased_worker

    client = _client(url)
    try:
        return await leased_worker(client, n)
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fresh")
    parser.add_argument("who", choices=["ours", "raw", "dramatiq"])
    parser.add_argument("url")
    parser.add_argument("n", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--prefetch", type=int)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    if args.who == "dramatiq":
        from benchmarks.dramatiq_baseline import fresh_drain

        finished = fresh_drain(args.url, args.n)
    elif args.loop == "uvloop":
        import uvloop

        coro = _ours(args.url, args.n, args) if args.who == "ours" else _raw(args.url, args.n)
        finished = uvloop.run(coro)
    else:
        coro = _ours(args.url, args.n, args) if args.who == "ours" else _raw(args.url, args.n)
        finished = asyncio.run(coro)
    print(json.dumps({"finished_at": finished}), flush=True)


if __name__ == "__main__":
    main()
