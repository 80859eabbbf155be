"""Hook specifications: how plugins extend the broker.

A plugin is an ordinary module with ``@hookimpl`` functions, registered under the
``broker`` entry-point group::

    [project.entry-points.broker]
    sqs = "broker_sqs.plugin"

Hooks are synchronous (pluggy's calls are), so they describe and build things; all I/O
stays on the :class:`~broker_core.transport.Transport` they return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from broker_core.transport import Transport

__all__ = ["PROJECT", "TransportInfo", "hookimpl", "hookspec"]

PROJECT = "broker"
"""The pluggy project name, which is also the entry-point group plugins register under."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True, slots=True)
class TransportInfo:
    """What a transport plugin tells about itself, for ``broker plugins`` and errors."""

    name: str
    schemes: tuple[str, ...]
    description: str


# ---------------------------------------------------------------------------
# transports
# ---------------------------------------------------------------------------


@hookspec
def broker_transport_info() -> TransportInfo:  # type: ignore[empty-body]
    """Describe the transport this plugin provides: its name and URL schemes.

    Called for listing installed transports and for the error raised when no plugin
    serves a URL's scheme.
    """


@hookspec(firstresult=True)
def broker_make_transport(url: str, options: Mapping[str, Any]) -> Transport | None:
    """Build a transport for ``url``, or return None if its scheme is not this plugin's.

    :param url: the broker URL, e.g. ``redis://localhost:6379/0``.
    :param options: transport options the caller passed beyond those in the URL (for
        example ``clock`` for tests, or ``key_prefix``); a plugin ignores the ones it
        does not know.

    The first plugin that returns a transport wins. The transport is not connected yet.
    """
