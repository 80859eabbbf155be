"""``broker tail`` as a real process on a real Redis, and ``broker unsubscribe``."""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import ClassVar

import pytest
from checkout import checkout_env
from typer.testing import CliRunner

from broker_core import Broker, Event
from broker_core.cli import app
from broker_redis.testing import RedisServer


class TailedOrder(Event):
    topic: ClassVar[str] = "tailed"
    key_field: ClassVar[str | None] = "order_id"
    order_id: str
    note: str


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's output lines, read by a thread so that the test can wait bounded."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def _until(lines: queue.Queue[str], wanted: str, seen: list[str], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(line)
        if wanted in line:
            return line
    raise AssertionError(f"no line with {wanted!r} in {seen}")


async def _groups(url: str) -> list[str]:
    async with Broker.from_url(url) as broker:
        return await broker.transport.groups("tailed")


async def _publish_when_tailing(url: str, process: subprocess.Popen[str]) -> str:
    async with Broker.from_url(url, group="billing") as broker, asyncio.timeout(20):
        while not any(g.startswith("tail-") for g in await broker.transport.groups("tailed")):
            assert process.poll() is None
            await asyncio.sleep(0.05)
        [tail] = [g for g in await broker.transport.groups("tailed") if g.startswith("tail-")]
        await broker.publish(TailedOrder(order_id="o-1", note="first"))
        await broker.publish(
            TailedOrder(order_id="o-2", note="\x1b]0;owned\x07\x1b[2J", headers={"h": "v"})
        )
        return tail


def test_tail_prints_events_live_and_leaves_nothing_behind(
    redis_server: RedisServer, redis_url: str
) -> None:
    url = f"{redis_url}?key_prefix=tailtest"

    async def setup() -> None:
        async with Broker.from_url(url, group="billing") as broker:
            await broker.subscribe("tailed")

    asyncio.run(setup())
    with redis_server.admin() as client:
        before = {k: client.type(k) for k in client.scan_iter(match="tailtest:*")}
    process = subprocess.Popen(
        [sys.executable, "-m", "broker_core", "tail", "--topic", "tailed", "--group", "billing"],
        env=checkout_env(BROKER_URL=url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        lines = _lines(process)
        tail = asyncio.run(_publish_when_tailing(url, process))
        first = _until(lines, "id=", seen)
        second = _until(lines, "id=", seen)
        process.send_signal(signal.SIGTERM)
        _until(lines, "stopped", seen)
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, seen
    assert seen[0].startswith("tailing tailed (what billing receives) on redis://127.0.0.1:")
    assert "TailedOrder" in first and "key=o-1" in first and '"note":"first"' in first
    assert "key=o-2" in second and 'headers={"h": "v"}' in second
    # The payload's terminal escapes are printed as text, never sent to the terminal.
    assert "\x1b" not in second and "\x07" not in second
    assert "\\u001b]0;owned\\u0007\\u001b[2J" in second
    # No trace of the tail: billing holds its two events, as before plus those.
    assert asyncio.run(_groups(url)) == ["billing"]
    with redis_server.admin() as client:
        keys = set(client.scan_iter(match="tailtest:*"))
        assert not any(tail.encode() in k for k in keys)
        assert client.llen("tailtest:{tailed}:g:billing:ready") == 2
        assert set(client.hvals("tailtest:{tailed}:refs")) == {b"1"}
        # Topic keys beyond those of before: the two publishes' own (bodies, dedup ids,
        # the count of publishes).
        published = {b"msg", b"refs", b"eventkeys", b"dedup", b"published"}
        assert {k for k in keys if b":g:" not in k} <= set(before) | {
            b"tailtest:{tailed}:" + name for name in published
        }


def test_tail_of_a_group_that_is_not_subscribed_is_refused(redis_url: str) -> None:
    result = CliRunner().invoke(
        app, ["tail", "--topic", "tailed", "--group", "nobody", "--url", redis_url]
    )
    assert result.exit_code == 2, result.output
    assert "group 'nobody' is not subscribed to 'tailed'" in result.output


def test_tail_refuses_an_in_memory_store() -> None:
    result = CliRunner().invoke(app, ["tail", "--topic", "tailed", "--url", "memory://"])
    assert result.exit_code == 2, result.output
    assert "in-memory store" in result.output


@pytest.mark.asyncio
async def test_unsubscribe_command_asks_then_removes_the_group(redis_url: str) -> None:
    async with Broker.from_url(redis_url, group="old-service") as broker:
        await broker.subscribe("tailed")
        await broker.publish(TailedOrder(order_id="o-1", note="x"))
    runner = CliRunner()
    args = ["unsubscribe", "--topic", "tailed", "--group", "old-service", "--url", redis_url]
    refused = await asyncio.to_thread(runner.invoke, app, args, input="n\n")
    assert refused.exit_code == 1, refused.output
    assert await _groups(redis_url) == ["old-service"]
    done = await asyncio.to_thread(runner.invoke, app, [*args, "--yes"])
    assert done.exit_code == 0, done.output
    assert "unsubscribed old-service from tailed" in done.output
    assert await _groups(redis_url) == []
    again = await asyncio.to_thread(runner.invoke, app, [*args, "--yes"])
    assert "was not subscribed" in again.output
