"""The options of the PostgreSQL transport: the table, defaults, URL parsing and validation.

``postgresql://[user[:password]@]host[:port]/database[?option=value&...]`` (or
``postgres://``). The options below may be given in the query string or as keyword
arguments (a keyword argument wins); every other query parameter (``sslmode``, ...) goes
to asyncpg unchanged.

``schema``
    The schema holding the transport's tables and functions (default ``"broker"``),
    created and migrated on connect: two applications with different schemas share one
    database without seeing each other.
``max_connections``
    Size of the connection pool (default 10); the LISTEN connection is one more.
``connect_timeout`` / ``command_timeout``
    Seconds to wait for a connection / an answer (defaults 5 and 30).
``max_body_bytes``
    Largest event body accepted (default 1 MiB, the Broker's default
    ``max_event_bytes``); larger ones raise EventTooLarge before anything is written.
``poll_interval``
    Longest an idle consumer waits without looking at the tables (default 1 s): the
    fallback for a lost notification and for leases that expired in consumers that died.
``clock`` (keyword only)
    A Clock to read the time from instead of the server's ``clock_timestamp()`` (tests).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from broker_core import redact

__all__ = ["DEFAULTS", "OPTION_NAMES", "SCHEMES", "PostgresOptions", "parse_options"]

SCHEMES = ("postgresql", "postgres")
"""The URL schemes this transport serves."""

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_PARSERS: dict[str, Callable[[str], Any]] = {
    "schema": str,
    "max_connections": int,
    "connect_timeout": float,
    "command_timeout": float,
    "max_body_bytes": int,
    "poll_interval": float,
}

DEFAULTS: Mapping[str, Any] = {
    "schema": "broker",
    "max_connections": 10,
    "connect_timeout": 5.0,
    "command_timeout": 30.0,
    "max_body_bytes": 1024 * 1024,
    "poll_interval": 1.0,
}
"""The default of every option that may be a URL parameter."""

OPTION_NAMES = frozenset({*_PARSERS, "clock"})
"""The keyword options of PostgresTransport (all but ``clock`` may also be URL parameters)."""


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """The transport's options, parsed and checked; ``dsn`` is what asyncpg gets."""

    dsn: str = field(repr=False)  # it may hold a password
    schema: str
    max_connections: int
    connect_timeout: float
    command_timeout: float
    max_body_bytes: int
    poll_interval: float


def validate_schema(name: str) -> str:
    """Return ``name`` if it is a schema name this transport uses, else raise ValueError."""
    if not isinstance(name, str) or not _SCHEMA.fullmatch(name):
        raise ValueError(
            f"invalid schema name {name!r}: use 1-63 characters from lowercase letters, "
            "digits and '_', not starting with a digit"
        )
    return name


def parse_options(url: str, keywords: Mapping[str, Any]) -> PostgresOptions:
    """Options from ``url``'s query, overridden by the ``keywords`` that are not None.

    Raises ValueError, naming the option, for a URL that is not a PostgreSQL URL, a value
    that does not parse, a bad schema name or a number that is not positive.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {redact(url)!r}")
    values = dict(DEFAULTS)
    theirs: list[tuple[str, str]] = []
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _PARSERS:
            theirs.append((name, text))
            continue
        try:
            values[name] = _PARSERS[name](text)
        except ValueError:
            raise ValueError(f"invalid {name}={text!r} in PostgreSQL URL {redact(url)!r}") from None
    values.update({name: value for name, value in keywords.items() if value is not None})
    for name, value in values.items():
        if name != "schema" and value <= 0:
            raise ValueError(f"PostgresTransport option {name} must be positive, got {value}")
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(theirs)))
    return PostgresOptions(
        dsn=dsn,
        schema=validate_schema(values["schema"]),
        max_connections=int(values["max_connections"]),
        connect_timeout=float(values["connect_timeout"]),
        command_timeout=float(values["command_timeout"]),
        max_body_bytes=int(values["max_body_bytes"]),
        poll_interval=float(values["poll_interval"]),
    )
