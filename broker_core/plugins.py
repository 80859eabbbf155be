"""The plugin manager: finds transport plugins and picks one by URL scheme."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pluggy

from broker_core import hooks
from broker_core.errors import UnknownTransport
from broker_core.hooks import TransportInfo
from broker_core.transport import Transport
from broker_core.urls import redact

__all__ = ["installed_transports", "make_transport", "plugin_manager"]


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every ``broker`` entry point loaded."""
    pm = pluggy.PluginManager(hooks.PROJECT)
    pm.add_hookspecs(hooks)
    pm.load_setuptools_entrypoints(hooks.PROJECT)
    return pm


def installed_transports(pm: pluggy.PluginManager | None = None) -> list[TransportInfo]:
    """Every installed transport, sorted by name."""
    pm = pm or plugin_manager()
    infos: list[TransportInfo] = pm.hook.broker_transport_info()
    return sorted(infos, key=lambda info: info.name)


def make_transport(
    url: str,
    options: Mapping[str, Any] | None = None,
    pm: pluggy.PluginManager | None = None,
) -> Transport:
    """Build the transport that serves ``url``'s scheme (not yet connected).

    Raises UnknownTransport, listing the installed schemes, when no plugin serves it.
    """
    pm = pm or plugin_manager()
    transport: Transport | None = pm.hook.broker_make_transport(
        url=url, options=dict(options or {})
    )
    if transport is None:
        scheme = urlsplit(url).scheme or "(none)"
        schemes = sorted(s for info in installed_transports(pm) for s in info.schemes)
        raise UnknownTransport(
            f"no transport for scheme {scheme!r} in {redact(url)!r}; installed schemes: "
            + (", ".join(f"{s}://" for s in schemes) or "none")
        )
    return transport
