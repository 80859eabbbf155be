"""What the dashboard tests share: a real server in a thread, HTTP without redirects, data.

The dashboard runs in uvicorn on a loopback port, on a thread of its own with its own
event loop; the tests talk HTTP to it and set up the store from their own loop. Every
wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any, ClassVar
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette

from broker_core import Broker, Event
from broker_core.transport import DeadLetter, Transport

__all__ = [
    "HOSTILE",
    "Client",
    "DashOrder",
    "Recording",
    "Reply",
    "kill_all",
    "running",
]

HOSTILE = '</pre><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
"""A payload that would run script if a page put it into its markup unescaped."""


class DashOrder(Event):
    topic: ClassVar[str] = "orders"
    order_id: str
    note: str = ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def running(app: Starlette) -> Iterator[str]:
    """Serve ``app`` on a free loopback port until the block ends; yields its base URL."""
    port = _free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the dashboard did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Reply:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    text: str


class Client:
    """HTTP to the dashboard that keeps its cookies and never follows a redirect."""

    def __init__(self, base: str) -> None:
        self.host, _, port = base.removeprefix("http://").partition(":")
        self.port = int(port)
        self.cookies: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        form: Sequence[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            text = response.read().decode()
            for value in response.headers.get_all("set-cookie") or []:
                for name, morsel in SimpleCookie(value).items():
                    self.cookies[name] = morsel.value
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, text)
        finally:
            connection.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, form: Sequence[tuple[str, str]], **kwargs: Any) -> Reply:
        return self.request("POST", path, form=form, **kwargs)

    def stream(self, path: str, events: int, timeout: float = 10) -> list[str]:
        """The first ``events`` server-sent events of ``path``, as raw text blocks."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 200
            blocks: list[str] = []
            current: list[str] = []
            deadline = time.monotonic() + timeout
            while len(blocks) < events and time.monotonic() < deadline:
                line = response.readline().decode()
                if not line:
                    break
                if line in ("\n", "\r\n"):
                    if current:
                        blocks.append("".join(current))
                    current = []
                else:
                    current.append(line)
            return blocks
        finally:
            connection.close()


class Recording:
    """A transport that records the reads the dashboard makes, then passes them on."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.dead_reads: list[tuple[int, int]] = []
        self.topic_reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def topics(self) -> list[str]:
        self.topic_reads += 1
        return await self.inner.topics()

    async def dead_letters(
        self, topic: str, group: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        self.dead_reads.append((limit, offset))
        return await self.inner.dead_letters(topic, group, limit=limit, offset=offset)


async def kill_all(broker: Broker, group: str, errors: Sequence[str]) -> None:
    """Claim every READY event of ``group`` on ``orders`` and kill them, the i-th with
    ``errors[i % len(errors)]``."""
    transport = broker.transport
    claimed = await transport.claim(group, ["orders"], max_count=100_000, lease=60, max_attempts=5)
    for i, message in enumerate(claimed):
        await transport.kill(message.receipt, reason="handler", error=errors[i % len(errors)])
