"""Redis Cluster: the client of a ``redis+cluster://`` URL, and running scripts on it.

The URL names seed nodes (``redis+cluster://h1:7000,h2:7001``); redis-py's asyncio
``RedisCluster`` learns every master and its slots from them, and routes each EVALSHA by
its first key. Every key of one script call shares its topic's hash tag (see
:mod:`broker_redis.keys`), so each call runs whole on the master that owns that slot.

Two differences from one node shape the code here:

- A cluster pipeline cannot carry scripts, so the calls of one round trip (a claim over
  several topics, acks of several queues) are sent concurrently instead, at most
  ``max_connections`` at a time: redis-py's cluster pool raises at once, instead of
  waiting, when a node has no free connection.
- Each master has its own script cache. The scripts are loaded on every master at
  connect; a NOSCRIPT answer (a ``SCRIPT FLUSH``, a restart, a replica promoted by a
  failover) reloads them on the node that gave it, and the call is sent again.

The client never re-sends a command itself (``retry`` of no attempts), as on one node: a
claim that reached a master must not run twice. It follows MOVED and ASK redirections,
which mean the command did not run, and after a connection failure the next call
refreshes the slot map first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, MovedError, NoScriptError, SlotNotCoveredError
from redis.maint_notifications import MaintNotificationsConfig

from broker_core.errors import TransportError
from broker_core.urls import redact
from broker_redis.errors import REDIS_ERRORS
from broker_redis.scripts import Call, ErrorMapper, Script, ScriptRunner

__all__ = ["ClusterScriptRunner", "ClusterSettings", "parse_cluster_url"]

_DEFAULT_PORT = 6379


def _node(text: str, url: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` as (host, port)."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host:
        raise ValueError(f"a node without a host in Redis Cluster URL {url!r}")
    try:
        number = int(port) if port else _DEFAULT_PORT
    except ValueError:
        raise ValueError(f"invalid port {port!r} in Redis Cluster URL {url!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"invalid port {port!r} in Redis Cluster URL {url!r}")
    return host, number


@dataclass(frozen=True)
class ClusterSettings:
    """What a ``redis+cluster://`` URL says: the seed nodes and the connection options."""

    nodes: tuple[tuple[str, int], ...]
    kwargs: dict[str, Any] = field(repr=False)  # it may hold a password
    """redis-py connection options (credentials, TLS, timeouts...) shared by every node."""

    def client(self, max_connections: int) -> RedisCluster:
        """A cluster client over the seed nodes; ``max_connections`` per node.

        Raises ValueError for an option redis-py does not know.
        """
        try:
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in self.nodes],
                max_connections=max_connections,
                # A dead master's slots fail alone: the others keep serving theirs.
                require_full_coverage=False,
                retry=Retry(NoBackoff(), 0),
                maint_notifications_config=MaintNotificationsConfig(enabled=False),
                **self.kwargs,
            )
        except TypeError as exc:
            raise ValueError(f"invalid option in Redis Cluster URL: {exc}") from None

    def node_client(self, host: str, port: int, **overrides: Any) -> Redis:
        """A plain client of one node (pub/sub), with the same credentials and TLS."""
        kwargs = {**self.kwargs, **overrides}
        return Redis(host=host, port=port, **kwargs)


def parse_cluster_url(url: str, **kwargs: Any) -> ClusterSettings:
    """The settings of ``redis+cluster://[user:password@]h1[:p1][,h2[:p2]...][/0][?...]``.

    ``kwargs`` (timeouts, encoding) are added to the URL's own redis-py options. Raises
    ValueError for a URL without nodes, a bad port or a database other than 0 (a cluster
    has only database 0).
    """
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = tuple(_node(text, redact(url)) for text in hosts.split(",") if text)
    if not nodes:
        raise ValueError(f"no node in Redis Cluster URL {redact(url)!r}")
    if parts.path not in ("", "/", "/0"):
        raise ValueError(
            f"Redis Cluster URL {redact(url)!r} names database {parts.path.lstrip('/')!r}: "
            "a cluster has only database 0"
        )
    tls = parts.scheme == "rediss+cluster"
    # redis-py parses the query (and the credentials) of a one-node URL into typed
    # options; the cluster client takes the same options.
    netloc = f"{userinfo}@localhost" if userinfo else "localhost"
    options: dict[str, Any] = dict(
        parse_url(urlunsplit(("rediss" if tls else "redis", netloc, "", parts.query, "")))
    )
    for name in ("host", "port", "db", "connection_class"):
        options.pop(name, None)
    if tls:
        options["ssl"] = True
    return ClusterSettings(nodes, {**options, **kwargs})


class ClusterScriptRunner(ScriptRunner):
    """Runs script calls on a Redis Cluster: each on the master of its keys' slot.

    At most ``max_connections`` calls are on the wire at once; a call waits up to
    ``timeout`` seconds for its turn, as one waits for a connection of a pool. A durable
    call and its ``WAIT`` go together on one connection of the master of its slot.
    """

    __slots__ = ("_slots", "_timeout")

    def __init__(
        self,
        redis: RedisCluster,
        error: ErrorMapper,
        max_connections: int,
        timeout: float,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        super().__init__(redis, error, replicas, replica_timeout)  # type: ignore[arg-type]
        self._slots = asyncio.Semaphore(max_connections)
        self._timeout = timeout

    @property
    def cluster(self) -> RedisCluster:
        """The cluster client."""
        return self._redis  # type: ignore[return-value]

    async def load(self, scripts: Iterable[Script]) -> None:
        """SCRIPT LOAD each script on every master; refuse a SHA other than ours."""
        scripts = list(scripts)

        async def load(script: Script) -> Any:
            async with self._slots:  # each uses one connection per master
                return await self.cluster.script_load(script.source)

        shas = await self._guard("loading scripts", asyncio.gather(*map(load, scripts)))
        self._check_shas(scripts, shas)

    async def _reload(self, lost: Sequence[tuple[Script, NoScriptError]]) -> None:
        """Load the scripts again on each node that answered NOSCRIPT."""
        by_node: dict[str, tuple[Any, set[Script]]] = {}
        for script, exc in lost:
            node = getattr(exc, "connection", None)
            if isinstance(node, ClusterNode):
                by_node.setdefault(node.name, (node, set()))[1].add(script)
            else:
                await self.load([script])
        for node, scripts in by_node.values():
            for script in scripts:
                sha = await self._guard(
                    "loading scripts",
                    self.cluster.execute_command("SCRIPT LOAD", script.source, target_nodes=node),
                )
                self._check_shas([script], [sha])

    async def _send(self, op: str, calls: Sequence[Call]) -> list[Any]:
        """Each call on its own master, concurrently: each call's reply, or its error."""
        return list(await asyncio.gather(*(self._one(op, call) for call in calls)))

    async def _send_durable(self, op: str, calls: Sequence[Call]) -> list[Any]:
        """Each call and a WAIT on one connection of its master, concurrently."""
        return list(await asyncio.gather(*(self._one(op, call, durable=True) for call in calls)))

    async def _one(self, op: str, call: Call, *, durable: bool = False) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            # Returned, not raised: the calls sent beside this one still get their replies.
            return TransportError(
                f"{op} failed: every connection stayed busy (raise the max_connections option)"
            )
        try:
            if durable:
                return await self._with_wait(op, call)
            return await self.cluster.evalsha(
                call.script.sha, len(call.keys), *call.keys, *call.args
            )
        except REDIS_ERRORS as exc:  # NoScriptError included: run() reloads
            return exc
        finally:
            self._slots.release()

    async def _with_wait(self, op: str, call: Call) -> Any:
        """EVALSHA and WAIT on one connection of the master of the call's slot.

        WAIT counts the replicas that have the writes of its own connection, so the two
        cannot go through the cluster client, which may pick any connection. A MOVED or
        ASK answer (the slot moved: nothing ran) refreshes the slot map and tries again.
        """
        for _ in range(2):
            node = self.cluster.get_node_from_key(call.keys[0])
            if node is None:
                return SlotNotCoveredError(f"no master serves the slot of {call.keys[0]!r}")
            commands = [
                PipelineCommand(0, "EVALSHA", call.script.sha, len(call.keys), *call.keys,
                                *call.args),
                PipelineCommand(1, "WAIT", *self._wait_args()),
            ]  # fmt: skip
            try:
                await node.execute_pipeline(commands)
            except REDIS_ERRORS:
                await self._refresh()
                raise
            reply, acked = commands[0].result, commands[1].result
            if isinstance(reply, NoScriptError):
                reply.connection = node  # type: ignore[attr-defined]  # where to reload
            if isinstance(reply, MovedError | AskError):
                await self._refresh()
                continue
            if not isinstance(reply, Exception):
                self._check_replicated(op, acked)
            return reply
        return reply

    async def _refresh(self) -> None:
        """Learn the slot map again (after a failover or a reshard)."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self.cluster.nodes_manager.initialize()
