"""The examples run as a newcomer runs them, on the embedded default, and say they worked."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from types import ModuleType

import pytest
from checkout import REPOSITORY, checkout_env

from broker_core import Broker, Event
from broker_redis.testing import unique_prefix


@pytest.mark.parametrize(
    ("example", "last_line"),
    [
        ("quickstart.py", None),
        ("two_services.py", None),
        ("outbox_relay.py", "every event handled once by each group"),
        ("read_model.py", "the rebuilt read model matches"),
    ],
)
def test_example_runs(example: str, last_line: str | None) -> None:
    done = subprocess.run(
        [sys.executable, str(REPOSITORY / "examples" / example)],
        capture_output=True,
        text=True,
        timeout=60,
        env=checkout_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    if last_line is not None:
        assert done.stdout.strip().splitlines()[-1] == last_line


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (under a name of its own: the file is no package's)."""
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", REPOSITORY / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_flask_view_publishes_what_a_consumer_then_handles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if importlib.util.find_spec("flask") is None:
        # As for redis-server (conftest.py): skipped locally, a failure in CI.
        message = "flask is not installed (the test extra has it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    url = f"memory://{unique_prefix()}"
    monkeypatch.setenv("BROKER_URL", url)
    example = load_example("flask_publisher")
    handled: list[Event] = []
    try:
        async with Broker.from_url(url, group="audit") as consumer:
            await consumer.subscribe("orders")

            @consumer.on(example.OrderPlaced)
            async def record(event: Event) -> None:
                handled.append(event)

            client = example.app.test_client()
            # In a thread, as a WSGI server runs its views: not on this test's event loop.
            response = await asyncio.to_thread(
                client.post, "/orders", json={"order_id": "A-1", "total": 9.5}
            )
            assert response.status_code == 202, response.text
            assert response.json["groups"] == 1
            assert await consumer.pick()
    finally:
        await asyncio.to_thread(example.publisher.close)
    [event] = handled
    assert isinstance(event, example.OrderPlaced)
    assert (event.id, event.order_id, event.total) == (response.json["event_id"], "A-1", 9.5)
