"""``broker run --metrics-port``: a real service process whose ``/metrics`` the test scrapes.

The service runs on Redis in a process of its own; the test publishes from here, then
reads ``/metrics`` over HTTP on loopback until the counts are there (bounded), and stops
the service with SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest
from checkout import checkout_env
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from broker_core import Broker, Event
from broker_core.cli import app

SERVICE = """
from typing import ClassVar

from broker_core import Broker, Event


class Ping(Event):
    topic: ClassVar[str] = "pings"
    n: int


class Pong(Event):
    topic: ClassVar[str] = "pongs"
    n: int


broker = Broker.from_settings()


@broker.on(Ping)
async def handle(event: Ping) -> None:
    if event.n == 0:
        raise ValueError("poison")
    await broker.publish(Pong(n=event.n))
"""


class Ping(Event):
    topic: ClassVar[str] = "pings"
    n: int


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


async def _publish_when_subscribed(url: str, process: subprocess.Popen[str]) -> None:
    async with Broker.from_url(url) as publisher:
        async with asyncio.timeout(20):
            while "svc" not in await publisher.transport.groups("pings"):
                assert process.poll() is None, process.communicate()[0]
                await asyncio.sleep(0.05)
        assert await publisher.publish_many([Ping(n=1), Ping(n=2), Ping(n=0)]) == 3


def test_broker_run_serves_the_metrics_of_its_broker(tmp_path: Path, redis_url: str) -> None:
    url = f"{redis_url}?key_prefix=cli-metrics"
    port = _free_port()
    (tmp_path / "service.py").write_text(SERVICE)
    env = checkout_env(
        BROKER_URL=url,
        BROKER_GROUP="svc",
        BROKER_POLL_INTERVAL="0.1",
        BROKER_MAX_ATTEMPTS="2",
        BROKER_RETRY__INITIAL_DELAY="0",
        BROKER_RETRY__JITTER="0",
    )
    command = ["run", "service:broker", "--metrics-port", str(port), "--metrics-refresh", "0.2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "broker_core", *command],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    handled = {"topic": "pings", "group": "svc", "event_type": "Ping"}
    expected = {
        _key("broker_events_published_total", topic="pongs", group="", event_type="Pong"): 2,
        _key("broker_events_delivered_total", **handled): 4,
        _key("broker_events_acked_total", **handled): 2,
        _key("broker_events_retried_total", **handled): 1,
        _key("broker_events_dead_lettered_total", **handled): 1,
        _key("broker_handler_duration_seconds_count", **handled, outcome="acked"): 2,
        _key("broker_handler_duration_seconds_count", **handled, outcome="retried"): 1,
        _key("broker_handler_duration_seconds_count", **handled, outcome="dead"): 1,
        _key("broker_queue_events", topic="pings", group="svc", state="ready"): 0,
        _key("broker_queue_events", topic="pings", group="svc", state="leased"): 0,
        _key("broker_queue_events", topic="pings", group="svc", state="delayed"): 0,
        _key("broker_queue_events", topic="pings", group="svc", state="dead"): 1,
    }
    try:
        asyncio.run(_publish_when_subscribed(url, process))
        samples: Samples = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[0]
            try:
                samples = _scrape(port)
            except (urllib.error.URLError, ConnectionError):
                samples = {}
            if all(samples.get(key) == value for key, value in expected.items()):
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert {key: samples.get(key) for key in expected} == expected
    assert process.returncode == 0, output
    assert f"serving metrics at http://127.0.0.1:{port}/metrics" in output
    assert "stopped" in output
    # The server ended with the process.
    with pytest.raises(urllib.error.URLError):
        _scrape(port)


def test_metrics_port_without_prometheus_client_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if prometheus_client were not installed: importing it raises ModuleNotFoundError.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    for name in [m for m in sys.modules if m.startswith("broker_prometheus")]:
        monkeypatch.delitem(sys.modules, name)
    result = CliRunner().invoke(app, ["run", "os:path", "--metrics-port", str(_free_port())])
    assert result.exit_code == 2, result.output
    assert "--metrics-port needs prometheus_client" in result.output
    assert "embedded-event-broker[prometheus]" in result.output


def test_a_metrics_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["run", "os:path", "--metrics-port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.output
