"""The plugin managers: the process-wide one of entry-point plugins, and per broker.

Entry-point plugins are loaded once per process into one manager, which every broker
without plugins of its own shares. A broker given plugins explicitly gets a manager of
its own, holding the entry-point plugins and its own: built once, when the broker is.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import pluggy

from broker_core import hooks
from broker_core.errors import UnknownTransport
from broker_core.hooks import TransportInfo
from broker_core.transport import Transport
from broker_core.urls import redact

__all__ = ["broker_plugin_manager", "installed_transports", "make_transport", "plugin_manager"]


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every ``broker`` entry point loaded."""
    pm = pluggy.PluginManager(hooks.PROJECT)
    pm.add_hookspecs(hooks)
    pm.load_setuptools_entrypoints(hooks.PROJECT)
    return pm


def broker_plugin_manager(plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    """The manager of a broker given ``plugins``: the shared one if there are none.

    Otherwise a new manager with the entry-point plugins and then ``plugins`` (modules or
    objects with ``@hookimpl`` methods), so that the broker's own are called first. A
    plugin that is already an entry-point plugin is not registered twice.
    """
    shared = plugin_manager()
    own = [plugin for plugin in plugins if not shared.is_registered(plugin)]
    if not own:
        return shared
    pm = pluggy.PluginManager(hooks.PROJECT)
    pm.add_hookspecs(hooks)
    for name, plugin in shared.list_name_plugin():
        pm.register(plugin, name)
    for plugin in own:
        if not pm.is_registered(plugin):  # the same plugin given twice
            pm.register(plugin)
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
