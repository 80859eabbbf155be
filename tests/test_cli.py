"""The ``broker`` command line."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
from checkout import checkout_env
from typer.testing import CliRunner

from broker_core import Broker, Event
from broker_core.cli import app

runner = CliRunner()


def test_plugins_lists_the_bundled_transports() -> None:
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "memory://" in result.output
    assert "redis://" in result.output


def test_demo_reports_nothing_lost() -> None:
    result = runner.invoke(app, ["demo", "--events", "200"])
    assert result.exit_code == 0, result.output
    assert "nothing lost" in result.output
    for column in ("published", "delivered", "redelivered", "dead", "lost", "events/s"):
        assert column in result.output
    for group in ("demo-billing", "demo-shipping"):
        assert group in result.output


def test_unknown_transport_is_a_clear_error() -> None:
    result = runner.invoke(app, ["stats", "--url", "nope://x"])
    assert result.exit_code == 2
    assert "installed schemes" in result.output


def test_run_rejects_what_is_not_a_broker() -> None:
    result = runner.invoke(app, ["run", "os:path"])
    assert result.exit_code != 0
    assert "is not a Broker" in result.output
    result = runner.invoke(app, ["run", "no_such_module_anywhere:broker"])
    assert result.exit_code != 0
    assert "cannot load" in result.output


SERVICE = """
from pathlib import Path
from typing import ClassVar

from broker_core import Broker, Event


class Ping(Event):
    topic: ClassVar[str] = "pings"
    n: int


broker = Broker.from_settings()


@broker.on(Ping)
async def handle(event: Ping) -> None:
    Path("handled").write_text(str(event.n))
"""


class Ping(Event):
    topic: ClassVar[str] = "pings"
    n: int


async def _publish_when_subscribed(url: str, process: subprocess.Popen[str]) -> None:
    async with Broker.from_url(url) as publisher:
        async with asyncio.timeout(20):
            while "svc" not in await publisher.transport.groups("pings"):
                assert process.poll() is None, process.communicate()[0]
                await asyncio.sleep(0.05)
        assert await publisher.publish(Ping(n=7)) == 1


def _start_service(
    directory: Path, source: str, url: str, **settings: str
) -> subprocess.Popen[str]:
    """``broker run service:broker`` on ``source``, in a process of its own."""
    (directory / "service.py").write_text(source)
    env = checkout_env(BROKER_URL=url, BROKER_GROUP="svc", BROKER_POLL_INTERVAL="0.1", **settings)
    return subprocess.Popen(
        [sys.executable, "-m", "broker_core", "run", "service:broker"],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_run_serves_a_module_and_stops_gracefully_on_sigterm(
    tmp_path: Path, redis_url: str
) -> None:
    url = f"{redis_url}?key_prefix=cli-run"
    process = _start_service(tmp_path, SERVICE, url)
    try:
        asyncio.run(_publish_when_subscribed(url, process))
        deadline = time.monotonic() + 20
        while not (tmp_path / "handled").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "stopped" in output
    assert (tmp_path / "handled").read_text() == "7"


STUCK_SERVICE = """
import threading
from pathlib import Path
from typing import ClassVar

from broker_core import Broker, Event


class Ping(Event):
    topic: ClassVar[str] = "pings"
    n: int


broker = Broker.from_settings()


@broker.on(Ping)
def handle(event: Ping) -> None:
    Path("started").write_text(str(event.n))
    threading.Event().wait()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_second_signal_aborts_run_even_with_a_handler_stuck_in_its_thread(
    tmp_path: Path, redis_url: str, signum: signal.Signals
) -> None:
    url = f"{redis_url}?key_prefix=cli-abort"
    # A grace far longer than the test waits: only the abort can end this run in time.
    process = _start_service(tmp_path, STUCK_SERVICE, url, BROKER_SHUTDOWN_GRACE="600")
    try:
        asyncio.run(_publish_when_subscribed(url, process))
        deadline = time.monotonic() + 20
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "started").exists()
        process.send_signal(signum)
        time.sleep(0.5)
        assert process.poll() is None, "the first signal must wait for the stuck handler"
        process.send_signal(signum)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signum, output
    assert "stopping" in output
    assert "aborting" in output


async def _one_dead_letter(url: str) -> str:
    async with Broker.from_url(url, group="ops", max_attempts=1) as broker:

        @broker.on(Ping)
        async def fail(event: Ping) -> None:
            raise ValueError("bad ping")

        await broker.subscribe("pings")
        event = Ping(n=1)
        await broker.publish(event)
        assert await broker.pick()
        while await broker.pick():
            pass
        return event.id


def test_operator_commands_show_replay_and_purge_dead_letters(redis_url: str) -> None:
    url = f"{redis_url}?key_prefix=cli-ops"
    event_id = asyncio.run(_one_dead_letter(url))

    listed = runner.invoke(app, ["dead", "--url", url, "--topic", "pings", "--group", "ops"])
    assert listed.exit_code == 0, listed.output
    assert event_id in listed.output
    assert "ValueError: bad ping" in listed.output
    skipped = runner.invoke(
        app, ["dead", "--url", url, "--topic", "pings", "--group", "ops", "--offset", "1"]
    )
    assert skipped.exit_code == 0 and event_id not in skipped.output

    stats = runner.invoke(app, ["stats", "--url", url])
    assert stats.exit_code == 0, stats.output
    assert "pings" in stats.output and "ops" in stats.output
    assert "lag" in stats.output

    replayed = runner.invoke(
        app, ["replay", "--url", url, "--topic", "pings", "--group", "ops", "--id", event_id]
    )
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 dead events of pings/ops" in replayed.output

    asyncio.run(_one_dead_letter(url))
    purged = runner.invoke(app, ["purge", "--url", url, "--topic", "pings", "--group", "ops"])
    assert purged.exit_code == 0, purged.output
    # The replayed event failed again on its fresh attempt, next to the new one.
    assert "purged 2 dead events of pings/ops" in purged.output


OPERATOR_COMMANDS = [
    ["stats"],
    ["dead", "--topic", "pings", "--group", "ops"],
    ["replay", "--topic", "pings", "--group", "ops"],
    ["purge", "--topic", "pings", "--group", "ops"],
]


@pytest.mark.parametrize("command", OPERATOR_COMMANDS, ids=lambda c: c[0])
def test_operator_commands_without_a_store_are_an_error(command: list[str]) -> None:
    result = runner.invoke(app, command, env={"BROKER_URL": None})
    assert result.exit_code == 2, result.output
    assert "no store given" in result.output
    assert "--url" in result.output and "BROKER_URL" in result.output
    assert "visible only inside the process" in result.output


@pytest.mark.parametrize("command", OPERATOR_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("url", ["memory://", "memory://shop"])
def test_operator_commands_refuse_an_in_memory_store(command: list[str], url: str) -> None:
    # From --url and from BROKER_URL alike: either way the answer would always be empty.
    for result in (
        runner.invoke(app, [*command, "--url", url], env={"BROKER_URL": None}),
        runner.invoke(app, command, env={"BROKER_URL": url}),
    ):
        assert result.exit_code == 2, result.output
        assert f"{url} is an in-memory store" in result.output
        assert f"`broker {command[0]}` runs in a process of its own" in result.output
        assert "--url" in result.output and "BROKER_URL" in result.output


def test_operator_commands_read_the_store_from_broker_url(redis_url: str) -> None:
    url = f"{redis_url}?key_prefix=cli-env"
    event_id = asyncio.run(_one_dead_letter(url))
    env = {"BROKER_URL": url}

    listed = runner.invoke(app, ["dead", "--topic", "pings", "--group", "ops"], env=env)
    assert listed.exit_code == 0, listed.output
    assert event_id in listed.output

    stats = runner.invoke(app, ["stats"], env=env)
    assert stats.exit_code == 0, stats.output
    assert "pings" in stats.output and "ops" in stats.output

    replayed = runner.invoke(app, ["replay", "--topic", "pings", "--group", "ops"], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 dead events of pings/ops" in replayed.output

    asyncio.run(_one_dead_letter(url))
    purged = runner.invoke(app, ["purge", "--topic", "pings", "--group", "ops"], env=env)
    assert purged.exit_code == 0, purged.output
    assert "purged 2 dead events of pings/ops" in purged.output


def test_an_explicit_url_wins_over_broker_url(redis_url: str) -> None:
    url = f"{redis_url}?key_prefix=cli-explicit"
    event_id = asyncio.run(_one_dead_letter(url))
    listed = runner.invoke(
        app,
        ["dead", "--url", url, "--topic", "pings", "--group", "ops"],
        env={"BROKER_URL": "memory://"},
    )
    assert listed.exit_code == 0, listed.output
    assert event_id in listed.output
