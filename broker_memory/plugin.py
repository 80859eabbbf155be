"""The pluggy plugin that makes ``memory://`` URLs build a :class:`MemoryTransport`.

``memory://`` is the process-wide default store and ``memory://name`` a named one, so
every broker in a process built from the same URL shares one store. Options: ``clock``
(a :class:`~broker_core.clock.Clock`, used when the store is first made) and ``store``
(a :class:`~broker_memory.MemoryStore` to use instead of the URL's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from broker_core.hooks import TransportInfo, hookimpl
from broker_core.transport import Transport
from broker_memory.transport import MemoryStore, MemoryTransport, named_store

__all__ = ["broker_make_transport", "broker_transport_info"]


@hookimpl
def broker_transport_info() -> TransportInfo:
    """Describe the memory transport."""
    return TransportInfo(
        name="memory",
        schemes=("memory",),
        description="In-process store shared by every broker of the process "
        "(memory:// default, memory://name named); the embedded default.",
    )


@hookimpl
def broker_make_transport(url: str, options: Mapping[str, Any]) -> Transport | None:
    """A MemoryTransport for ``memory://[name]`` URLs; None for any other scheme."""
    parts = urlsplit(url)
    if parts.scheme != "memory":
        return None
    store = options.get("store")
    if isinstance(store, MemoryStore):
        return MemoryTransport(store=store)
    name = parts.netloc or parts.path.strip("/")
    return MemoryTransport(store=named_store(name, options.get("clock")))
