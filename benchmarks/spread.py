"""How a run's script calls spread over the masters: ``INFO commandstats`` per master.

:class:`Masters` holds a plain client of every master of a Redis Cluster (or of the one
node of a single server), in the order of the slots they serve. It resets the masters'
command statistics (``CONFIG RESETSTAT``), reads how many script calls each has run since,
and deletes the keys a benchmark step wrote under its own key prefix. :func:`shares` and
:func:`deviation` turn the counts into each master's share and how far the most uneven
share is from an even one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker_redis.cluster import parse_cluster_url
from broker_redis.options import parse_options

__all__ = [
    "SCRIPT_COMMANDS",
    "Masters",
    "deviation",
    "fresh_prefix",
    "script_calls",
    "shares",
    "with_prefix",
]

SCRIPT_COMMANDS = ("eval", "evalsha", "eval_ro", "evalsha_ro")
"""The commands that run a Lua script: every operation of the Redis transport is one."""

_TIMEOUT = 10.0


def script_calls(commandstats: Mapping[str, Any], field: str = "calls") -> int:
    """How many script calls an ``INFO commandstats`` answer (as redis-py parses it) counts,
    or (``field="usec"``) how many microseconds the server spent in them."""
    total = 0
    for command in SCRIPT_COMMANDS:
        stats = commandstats.get(f"cmdstat_{command}")
        if isinstance(stats, Mapping):
            total += int(stats.get(field, 0))
    return total


def shares(calls: Mapping[str, int]) -> dict[str, float]:
    """Each master's share of ``calls`` in percent (all 0 when nothing was called)."""
    total = sum(calls.values())
    return {name: 100.0 * n / total if total else 0.0 for name, n in calls.items()}


def deviation(percentages: Mapping[str, float]) -> float:
    """How many percentage points the share farthest from an even split is off it."""
    if not percentages:
        raise ValueError("no masters")
    even = 100.0 / len(percentages)
    return max(abs(share - even) for share in percentages.values())


def fresh_prefix() -> str:
    """A key prefix no step has used: each step starts on no keys, and its keys can be
    found (and deleted) afterwards."""
    return f"bench-{uuid.uuid4().hex[:16]}"


def with_prefix(url: str, prefix: str) -> str:
    """``url`` with its ``key_prefix`` option set to ``prefix`` (any other kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "key_prefix"]
    query.append(("key_prefix", prefix))
    return urlunsplit(parts._replace(query=urlencode(query)))


class Masters:
    """A plain client of each master of the cluster (or single server) of a Redis URL.

    ``names`` are ``host:port``, in the order of the lowest slot each master serves.
    """

    def __init__(self, clients: Mapping[str, Redis]) -> None:
        self._clients = dict(clients)

    @property
    def names(self) -> list[str]:
        """The masters, as ``host:port``."""
        return list(self._clients)

    @classmethod
    async def of(cls, url: str) -> Masters:
        """The masters of ``url`` (``redis://``, ``redis+cluster://`` and their TLS forms),
        asked of the first seed node that answers."""
        options = parse_options(url, {})
        if not options.cluster:
            return cls({"single": Redis.from_url(options.url, socket_timeout=_TIMEOUT)})
        settings = parse_cluster_url(options.url, socket_timeout=_TIMEOUT)
        failures: list[str] = []
        for host, port in settings.nodes:
            seed = settings.node_client(host, port)
            try:
                ranges = await seed.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:  # the next seed may answer
                failures.append(f"{host}:{port}: {exc}")
                continue
            finally:
                await seed.aclose()
            masters: dict[str, tuple[str, int]] = {}
            for _start, _end, master, *_replicas in sorted(ranges, key=lambda r: int(r[0])):
                address = (_text(master[0]) or host, int(master[1]))
                masters.setdefault(f"{address[0]}:{address[1]}", address)
            return cls({name: settings.node_client(h, p) for name, (h, p) in masters.items()})
        raise RuntimeError("no seed node of the cluster answered: " + "; ".join(failures))

    async def reset_stats(self) -> None:
        """``CONFIG RESETSTAT`` on every master: the counts start from zero."""
        for client in self._clients.values():
            await client.config_resetstat()

    async def script_calls(self) -> dict[str, tuple[int, int]]:
        """Script calls each master ran since the last reset (or since it started), and
        the microseconds it spent in them."""
        counts = {}
        for name, client in self._clients.items():
            stats = await client.info("commandstats")
            counts[name] = (script_calls(stats), script_calls(stats, "usec"))
        return counts

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` on every master; how many there were.

        One key per command: keys of several slots cannot share one ``DEL`` on a cluster.
        """
        deleted = 0
        for client in self._clients.values():
            async with client.pipeline(transaction=False) as pipe:
                async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                    pipe.unlink(key)
                    deleted += 1
                await pipe.execute()
        return deleted

    async def close(self) -> None:
        """Close every client."""
        for client in self._clients.values():
            await client.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
