"""Serving a registry over HTTP, at ``/metrics``, for as long as a block runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["serving"]


@contextlib.contextmanager
def serving(registry: CollectorRegistry, host: str, port: int) -> Iterator[None]:
    """Serve ``registry`` at ``http://host:port/metrics`` until the block ends.

    Scrapes are answered by prometheus_client's server in threads of its own, so a
    busy event loop does not delay them. Raises OSError if the address is taken.
    """
    server, thread = start_http_server(port, host, registry=registry)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
