"""The ``broker`` command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

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


def test_run_handles_events_and_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    # The service module publishes to itself once running, and marks each handled event.
    (tmp_path / "service.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            from pathlib import Path
            from typing import ClassVar
            from broker_core import Broker, Event

            class Ping(Event):
                topic: ClassVar[str] = "pings"
                n: int

            broker = Broker.from_url("memory://", group="svc", poll_interval=0.05)

            @broker.on(Ping)
            async def handle(event: Ping) -> None:
                Path("handled").write_text(str(event.n))
                if event.n == 0:
                    await broker.publish(Ping(n=1))
                    asyncio.get_running_loop().call_later(
                        0.01, lambda: Path("ready").write_text("ok"))

            async def start() -> None:
                await broker.publish(Ping(n=0))

            _run = broker.run
            async def run_and_publish() -> None:
                await broker.subscribe("pings")
                asyncio.get_running_loop().create_task(start())
                await _run()
            broker.run = run_and_publish
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "broker_core", "run", "service:broker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"exited early: {process.communicate()[0]}")
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "stopped" in output
    assert (tmp_path / "handled").read_text() == "1"
