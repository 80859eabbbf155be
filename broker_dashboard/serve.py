"""Running the dashboard: uvicorn on one address, and the Host names it answers."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from broker_core.broker import Broker
from broker_dashboard.app import DashboardConfig, create_app
from broker_dashboard.security import WritePolicy

__all__ = ["allowed_hosts", "serve"]

_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")
_ANY = ("0.0.0.0", "::", "")

# Open event streams would hold a graceful stop forever: they are closed after this.
_SHUTDOWN_GRACE = 2


def allowed_hosts(host: str) -> tuple[str, ...]:
    """The Host headers a dashboard bound to ``host`` answers.

    Bound to loopback, only loopback names: a page of another site that points a name
    of its own at 127.0.0.1 (DNS rebinding) is refused. Bound to one address, that one
    too. Bound to every address, any name (put it behind a proxy that checks them).
    """
    if host in _ANY:
        return ("*",)
    names = ("127.0.0.1", "localhost", "[::1]")
    if host in _LOOPBACK:
        return names
    return (*names, f"[{host}]" if ":" in host else host)


def serve(
    url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    policy: WritePolicy,
    refresh: float = 1.0,
) -> None:
    """Serve the dashboard of the store at ``url`` until SIGINT or SIGTERM."""
    config = DashboardConfig(policy=policy, refresh=refresh, allowed_hosts=allowed_hosts(host))
    app = create_app(Broker.from_url(url), config)
    server = _Server(
        app.state.close_streams,
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=_SHUTDOWN_GRACE,
            server_header=False,
        ),
    )
    server.run()


class _Server(uvicorn.Server):
    """uvicorn's server that ends the event streams when told to stop, and exits 0.

    Open event streams never end by themselves, so a graceful stop would wait for them
    until its timeout. And uvicorn raises the signals it caught again once it has
    stopped, so the process would end killed by SIGTERM rather than exit as
    ``broker run`` does.
    """

    def __init__(self, close_streams: Callable[[], None], config: uvicorn.Config) -> None:
        super().__init__(config)
        self._close_streams = close_streams

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop serving, and end the event streams."""
        super().handle_exit(sig, frame)
        self._close_streams()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Stop on SIGINT or SIGTERM (a second one forces it), then return normally."""
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
