"""``RedisTransport``: the delivery state machine in Redis, one Lua script per transition.

Any number of processes on any number of machines may share one Redis: every
transition is one atomic script (see ``scripts/`` and docs/redis-keys.md), and lease
deadlines and due times come from the server's own ``TIME``, so client clocks never
matter. Tests may pass a :class:`~broker_core.clock.Clock` instead; the scripts then
read the time from the client.

The URL and the options (key prefix, pool size, timeouts, body size limit, sweep
interval, replicas to wait for, clock) are described and parsed in
:mod:`broker_redis.options`. A ``redis+cluster://`` URL runs the same scripts on a Redis
Cluster (:mod:`broker_redis.cluster`), where idle consumers wait by pub/sub
(:mod:`broker_redis.wakeups`); see docs/cluster.md.

Failures
--------
Every Redis failure (unreachable, refused password, TLS error, timeout) raises
:class:`~broker_core.errors.TransportError` with what went wrong and the URL without its
password. A call is never re-sent automatically, because a claim or an ack that reached
the server must not run twice; the next call reconnects. ``publish`` is idempotent, so
a publisher may simply retry it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.maint_notifications import MaintNotificationsConfig

from broker_core import cancel_and_wait
from broker_core.clock import Clock
from broker_core.errors import EventTooLarge, SubscriptionMismatch, TransportError
from broker_core.names import validate_group, validate_key, validate_topic
from broker_core.partitions import (
    MAX_PARTITIONS,
    partition_change_refused,
    partition_of,
    validate_partitions,
)
from broker_core.retention import validate_history, validate_retention
from broker_core.transport import (
    DeadLetter,
    Message,
    QueueStats,
    Receipt,
    TopicStats,
    Transport,
)
from broker_core.urls import redact
from broker_redis.cluster import ClusterScriptRunner, ClusterSettings, parse_cluster_url
from broker_redis.errors import REDIS_ERRORS, transport_error
from broker_redis.keys import GroupKeys, Keys, TopicKeys
from broker_redis.options import DEFAULT_URL, OPTION_NAMES, parse_options
from broker_redis.packing import pack_with_hiredis
from broker_redis.pool import Pool
from broker_redis.scripts import SCRIPT_NAMES, Arg, Call, Script, ScriptRunner, load_script
from broker_redis.wakeups import Wakeups

__all__ = ["DEFAULT_URL", "OPTION_NAMES", "RedisTransport"]

log = logging.getLogger("broker.redis")

_T = TypeVar("_T")

# A publish retried this often still sees a different set of groups: subscribers change
# faster than one round trip.
_PUBLISH_ROUNDS = 5

# History work per script call: entries trimmed, and entries a copy reads. Each call
# stays well under a millisecond of Redis time; the client loops until done.
_TRIM_STEP = 1000
_COPY_STEP = 1000
# Replies of the history scripts: a copy is to be run; the script must be called again.
_COPY = 2
_CALL_AGAIN = 3

# What a script answers, {'~layout', its count}, when its call was built for another
# partition count than its unit's (includes/layout.lua).
_LAYOUT_MOVED = b"~layout"
# How long a call waits for a change of the partition count to end, looking this often.
_CHANGE_WAIT = 5.0
_CHANGE_PAUSE = 0.01
# A claim learns the count of its topics again at most once. Its second round trip asks
# the queues that have more; more are needed only when their claims buried events or
# other consumers took them first, and stop here.
_CLAIM_LAYOUT_ROUNDS = 2
_CLAIM_ROUNDS = 8
# The unit a receipt's token names, for a partitioned topic: ``<p>.<N>.<random>.<n>``.
_TOKEN_UNIT = re.compile(r"(\d{1,3})\.(\d{1,3})\.[0-9a-f]+\.\d+\Z", re.ASCII)


# The operations whose writes a failover must not lose: with min_replicas, each waits
# until that many replicas have them (a lost claim or extend only means a redelivery).
_DURABLE_OPS = frozenset(
    {"publish", "subscribe", "ack", "nack", "kill", "configure_topic", "copy_history"}
)

# Dead events replayed or purged per script call when all of them are: a call stays
# short (a few ms) however many are dead.
_DEAD_BATCH = 1000

MIN_REDIS_VERSION = (6, 2)
"""The oldest Redis whose commands every script and wait can use."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _text(value: bytes | str) -> str:
    # surrogateescape (both ways, see _pool) lets a foreign id that is not UTF-8 make the
    # round trip through a Receipt unchanged instead of breaking the claim.
    return value.decode(errors="surrogateescape") if isinstance(value, bytes) else value


def _flag(value: object) -> bool:
    return value == 1


def _stored_text(text: str) -> bytes:
    # A lone surrogate ('\udcff' from os.fsdecode, or '\ud800') would reach Redis as bytes
    # that are not UTF-8, spoiling the JSON dead-letter record, or not encode at all.
    # Spelled out as its escape (the six characters \udcff), the stored text is UTF-8.
    return text.encode("utf-8", "backslashreplace")


def _readable(text: str) -> str:
    # The same escape for text read back: a record stored with bad bytes (by an older
    # version, or by hand) arrives with them as lone surrogates (see _dead_record).
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _dead_record(raw: bytes) -> dict[str, Any]:
    """A dead letter's JSON record; one that is not JSON reads as empty, never raises.

    Bytes that are not UTF-8 become lone surrogates here, for _readable to spell out, so
    that one spoiled record cannot break the listing of a whole group.
    """
    try:
        record = json.loads(raw.decode("utf-8", "surrogateescape"))
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _dead_args(event_ids: Sequence[str] | None, limit: int = _DEAD_BATCH) -> list[Arg]:
    """ARGV of replay_dead and purge_dead: the next ``limit`` dead events, or those listed."""
    return ["all", limit] if event_ids is None else ["ids", *event_ids]


class _Unit(NamedTuple):
    """One unit of a topic (see broker_redis/keys.py): partition ``partition`` of its
    layout of ``partitions``; a topic of one partition is its one unit ``(topic, 0, 1)``."""

    topic: str
    partition: int
    partitions: int


def _units(topic: str, partitions: int) -> list[_Unit]:
    return [_Unit(topic, p, partitions) for p in range(partitions)]


class _Layout(NamedTuple):
    """A topic's partition count as its own unit stores it."""

    current: int
    """The count clients follow (the old one while a change is in progress)."""
    target: int | None
    """The count a change in progress goes to: its old units are all sealed."""


class _Sealed(NamedTuple):
    """What seal.lua answered for one unit of the layout a change leaves."""

    groups: tuple[str, ...]
    ordered: set[str]
    retention: tuple[str, str] | None
    """(max_age, max_events), each '' when unset; None for a unit that is gone."""


def _parse_layout(topic: str, raw: bytes | str | None) -> _Layout:
    if raw is None:
        return _Layout(1, None)
    text = _text(raw)
    old, changing, new = text.partition(">")
    try:
        return _Layout(int(old), int(new) if changing else None)
    except ValueError:
        raise TransportError(
            f"topic {topic!r} has an unreadable partition layout {text!r} in Redis"
        ) from None


def _moved(reply: Any) -> bool:
    """Whether a script refused its call's partition count (includes/layout.lua)."""
    return type(reply) is list and len(reply) == 2 and reply[0] == _LAYOUT_MOVED


def _sealed(reply: list[Any]) -> bool:
    """Whether a refusal of :func:`_moved` came from a unit sealed for a change."""
    return b">" in reply[1]


def _subscribe_again(reply: list[Any]) -> bool:
    """Whether subscribe's reply says to call again (trimming not done)."""
    return not _moved(reply) and reply[0] == _CALL_AGAIN


def _unit_of(receipt: Receipt) -> _Unit:
    """The unit a receipt's token names (``<p>.<N>.``...); a topic's own unit otherwise.

    A token naming a unit that does not exist is stale there like any other.
    """
    found = _TOKEN_UNIT.match(receipt.token)
    if found:
        partition, partitions = int(found.group(1)), int(found.group(2))
        if partition < partitions <= MAX_PARTITIONS:
            return _Unit(receipt.topic, partition, partitions)
    return _Unit(receipt.topic, 0, 1)


def _share(count: int, caps: Sequence[int]) -> list[int]:
    """``count`` shared out as evenly as ``caps`` allow: none above its cap, the first
    ones one more where it does not divide evenly."""
    quotas = [0] * len(caps)
    open_ = [i for i, cap in enumerate(caps) if cap > 0]
    while count > 0 and open_:
        share, extra = divmod(count, len(open_))
        still = []
        for n, i in enumerate(open_):
            give = min(caps[i] - quotas[i], share + (n < extra))
            quotas[i] += give
            count -= give
            if quotas[i] < caps[i]:
                still.append(i)
        open_ = still
    return quotas


def _holding(held: dict[str, int], bodies: int, retained: int, copies: int) -> str:
    """What holds events, for the PartitionChangeRefused message: a group (the first by
    name), the history, a history copy, or bodies stored."""
    for group, count in sorted(held.items()):
        if count:
            return f"group {group!r} holds events of the topic"
    if retained:
        return "its history retains events"
    if copies:
        return "a history copy of one of its groups is in progress"
    return "it stores events"


class RedisTransport:
    """The :class:`~broker_core.transport.Transport` over Redis; see the module docstring.

    ``url`` and the keyword options are described in :mod:`broker_redis.options`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        key_prefix: str | None = None,
        max_connections: int | None = None,
        socket_timeout: float | None = None,
        socket_connect_timeout: float | None = None,
        max_body_bytes: int | None = None,
        sweep_interval: float | None = None,
        min_replicas: int | None = None,
        replica_timeout: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        options = parse_options(
            url,
            {
                "key_prefix": key_prefix,
                "max_connections": max_connections,
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": socket_connect_timeout,
                "max_body_bytes": max_body_bytes,
                "sweep_interval": sweep_interval,
                "min_replicas": min_replicas,
                "replica_timeout": replica_timeout,
            },
        )
        self._keys = Keys(options.key_prefix)
        self._max_connections = options.max_connections
        self._socket_timeout = options.socket_timeout
        self._connect_timeout = options.socket_connect_timeout
        self._max_body_bytes = options.max_body_bytes
        self._sweep_interval = options.sweep_interval
        self._min_replicas = options.min_replicas
        self._replica_timeout = options.replica_timeout
        self._url = options.url
        self._safe_url = redact(options.url)
        self._password = urlsplit(options.url).password
        self._cluster: ClusterSettings | None = None
        if options.cluster:
            self._cluster = parse_cluster_url(
                options.url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._connect_timeout,
                encoding_errors="surrogateescape",
            )
            self._password = self._cluster.kwargs.get("password")
            self._cluster.client(self._max_connections)  # checks the URL's options now
        else:
            self._pool(self._socket_timeout)  # checks the URL's redis-py options now
        self._clock = clock
        self._redis: Redis | RedisCluster | None = None
        self._blocking: Redis | None = None
        self._scripts: ScriptRunner | None = None
        # On a cluster, idle consumers wait for wake-ups by pub/sub (see wakeups.py).
        self._wakeups: Wakeups | None = None
        # Concurrent connect() calls must build one pair of pools, not one pair each.
        # (asyncio.Lock binds to the running loop only when first contended.)
        self._connecting = asyncio.Lock()
        # The groups this process last saw subscribed to each unit of a topic: publish
        # passes them to its script, which answers with the real set if they changed.
        self._groups: dict[_Unit, tuple[str, ...]] = {}
        # The partition count this process last saw of each partitioned topic (any other
        # has 1): scripts refuse a call built for another count, which is then read again.
        self._partitions: dict[str, int] = {}
        # Where the next claim starts among its queues (see _rotated).
        self._turn = 0
        # (group, unit) -> local time (see _local_now) of the earliest lease deadline or
        # due retry the scripts reported: a waiter must not sleep past it.
        self._due: dict[tuple[str, _Unit], float] = {}
        # History copies this transport carries on for its consumers (see _messages).
        self._copies: dict[tuple[_Unit, str], asyncio.Task[None]] = {}

    @property
    def max_body_bytes(self) -> int:
        """The largest body ``publish`` stores (option ``max_body_bytes``)."""
        return self._max_body_bytes

    def __repr__(self) -> str:
        return f"RedisTransport({self._safe_url!r}, key_prefix={self._keys.prefix!r})"

    # -- connections and errors ----------------------------------------------------------

    def _pool(self, socket_timeout: float) -> Pool:
        pool = Pool.from_url(
            self._url,
            max_connections=self._max_connections,
            timeout=self._socket_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=self._connect_timeout,
            encoding_errors="surrogateescape",
            # With these "maintenance notifications" on (redis-py's default over RESP3),
            # the pool stops checking that an idle connection is still open, and the
            # first call after a Redis restart fails on the dead socket.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        pack_with_hiredis(pool)
        try:
            # Building one (unconnected) connection checks the URL's options now, not on
            # first use deep inside a call.
            pool.connection_class(**pool.connection_kwargs)
        except TypeError as exc:
            raise ValueError(f"invalid option in Redis URL {self._safe_url!r}: {exc}") from None
        return pool

    async def connect(self) -> None:
        """Open the connection pools, check the server answers, and load the scripts.

        Idempotent, also when called concurrently; after a failure it may be called again.
        """
        async with self._connecting:
            if self._redis is not None:
                return
            if self._cluster is not None:
                await self._connect_cluster(self._cluster)
                return
            redis = Redis(connection_pool=self._pool(self._socket_timeout))
            # A blocking wait lasts up to sweep_interval, so its reads may take that long.
            timeout = self._sweep_interval + self._socket_timeout
            blocking = Redis(connection_pool=self._pool(timeout))
            scripts = ScriptRunner(redis, self._error, self._min_replicas, self._replica_timeout)
            try:
                await self._guard("connect", redis.ping())
                await self._check_version(redis)
                await scripts.load(load_script(name) for name in SCRIPT_NAMES)
            except BaseException:
                await redis.aclose(close_connection_pool=True)
                await blocking.aclose(close_connection_pool=True)
                raise
            self._redis, self._blocking, self._scripts = redis, blocking, scripts

    async def _connect_cluster(self, settings: ClusterSettings) -> None:
        """Connect to a cluster: learn its slots, check every master, load the scripts."""
        redis = settings.client(self._max_connections)
        scripts = ClusterScriptRunner(
            redis,
            self._error,
            self._max_connections,
            self._socket_timeout,
            self._min_replicas,
            self._replica_timeout,
        )
        try:
            await self._guard("connect", redis.initialize())
            infos = await self._guard(
                "connect",
                redis.execute_command("INFO", "server", target_nodes=RedisCluster.PRIMARIES),
            )
            for info in infos.values():
                self._check_info(info)
            await scripts.load(load_script(name) for name in SCRIPT_NAMES)
        except BaseException:
            await redis.aclose()
            raise
        self._redis, self._scripts = redis, scripts
        self._wakeups = Wakeups(self._wakeup_client, self._socket_timeout)

    def _wakeup_client(self, attempt: int) -> Redis:
        """A client of one node for the wake-up subscription: the next node each time."""
        assert self._cluster is not None and isinstance(self._redis, RedisCluster)
        nodes = self._redis.get_nodes() or []
        if not nodes:
            host, port = self._cluster.nodes[attempt % len(self._cluster.nodes)]
        else:
            node = nodes[attempt % len(nodes)]
            host, port = node.host, int(node.port)
        # A subscribed connection waits for messages as long as the transport lives.
        return self._cluster.node_client(host, port, socket_timeout=None)

    async def _check_version(self, redis: Redis) -> None:
        """Refuse a server older than the commands the scripts use, with a clear message."""
        self._check_info(await self._guard("connect", redis.info("server")))

    def _check_info(self, info: dict[str, Any]) -> None:
        version = str(info.get("redis_version", "0"))
        if _version_tuple(version) < MIN_REDIS_VERSION:
            needed = ".".join(map(str, MIN_REDIS_VERSION))
            raise TransportError(
                f"Redis {version} at {self._safe_url} is too old: this transport needs "
                f"{needed} or newer (LPOP with a count, ZMSCORE, SMISMEMBER, ZADD GT, BLMOVE)"
            )

    async def close(self) -> None:
        """Close both connection pools; what is stored stays in Redis."""
        copies = [cancel_and_wait(task) for task in self._copies.values()]
        await asyncio.gather(*copies, return_exceptions=True)
        clients = (self._redis, self._blocking)
        wakeups = self._wakeups
        self._redis = self._blocking = self._scripts = self._wakeups = None
        if wakeups is not None:
            await wakeups.close()
        for client in clients:
            if isinstance(client, RedisCluster):
                await client.aclose()
            elif client is not None:
                await client.aclose(close_connection_pool=True)

    def _client(self) -> Redis | RedisCluster:
        if self._redis is None:
            raise TransportError("RedisTransport is not connected: call connect() first")
        return self._redis

    def _error(self, op: str, exc: BaseException) -> TransportError:
        """A TransportError saying what failed, without the password."""
        return transport_error(op, exc, self._safe_url, self._password)

    async def _guard(self, op: str, awaitable: Awaitable[_T]) -> _T:
        """Await a Redis call, turning its failures into TransportError."""
        try:
            return await awaitable
        except REDIS_ERRORS as exc:
            raise self._error(op, exc) from exc

    async def _run_partial(self, op: str, calls: Sequence[Call]) -> list[Any]:
        """As :meth:`_run`, with a failed call's TransportError as its reply."""
        self._client()
        assert self._scripts is not None  # set together with _redis
        return await self._scripts.run(op, calls, partial=True)

    async def _run(self, op: str, calls: Sequence[Call]) -> list[Any]:
        """Run script calls in one round trip; see :class:`ScriptRunner`."""
        self._client()
        assert self._scripts is not None  # set together with _redis
        return await self._scripts.run(op, calls, durable=op in _DURABLE_OPS)

    # -- time --------------------------------------------------------------------------

    def _now_arg(self) -> str:
        """ARGV[1] of the timed scripts: '' (use the server's TIME) or the injected clock."""
        return "" if self._clock is None else repr(self._clock.now())

    def _local_now(self) -> float:
        return time.monotonic() if self._clock is None else self._clock.now()

    def _note_due(self, group: str, unit: _Unit, now: bytes, next_due: bytes) -> None:
        """Remember when (group, unit) next needs a look, from a script's now/next_due."""
        if next_due:
            self._due[(group, unit)] = self._local_now() + float(next_due) - float(now)
        else:
            self._due.pop((group, unit), None)

    def _until_due(self, group: str, units: Sequence[_Unit]) -> float | None:
        dues = [self._due[(group, u)] for u in units if (group, u) in self._due]
        return min(dues) - self._local_now() if dues else None

    # -- partitions ----------------------------------------------------------------------

    def _units_of(self, topic: str) -> list[_Unit]:
        """The units of ``topic`` by the partition count this transport believes in."""
        return _units(topic, self._partitions.get(topic, 1))

    def _believe(self, topic: str, count: int) -> None:
        # Only partitioned topics are remembered: the count of any other is 1.
        if count == 1:
            self._partitions.pop(topic, None)
        else:
            self._partitions[topic] = count

    def _topic_keys(self, unit: _Unit) -> TopicKeys:
        return self._keys.topic(unit.topic, unit.partition, unit.partitions)

    def _group_keys(self, unit: _Unit, group: str) -> GroupKeys:
        return self._keys.group(unit.topic, group, unit.partition, unit.partitions)

    async def _layout(self, topic: str, op: str) -> _Layout:
        """``topic``'s partition layout, read from its own unit (one GET)."""
        key = self._keys.topic(topic).layout
        return _parse_layout(topic, await self._guard(op, self._client().get(key)))

    async def _current_units(self, topic: str, op: str) -> list[_Unit]:
        """The units of ``topic``'s layout now, read first (the read paths)."""
        layout = await self._layout(topic, op)
        self._believe(topic, layout.current)
        return _units(topic, layout.current)

    async def _follow(self, topic: str, sealed: bool, deadline: float, op: str) -> int:
        """The partition count to call ``topic``'s units with again, after a unit refused
        the count a call was built for: read from the topic's own unit, waiting while a
        change of the count is in progress (a unit was sealed, or the count reads
        ``N>M``) until ``deadline``, then raising TransportError."""
        if sealed:
            await self._pause(topic, deadline, op)
        while True:
            layout = await self._layout(topic, op)
            if layout.target is None:
                self._believe(topic, layout.current)
                return layout.current
            await self._pause(topic, deadline, op)

    async def _pause(self, topic: str, deadline: float, op: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportError(
                f"{op} on {topic!r} failed: its partition count is being changed. If no "
                f"configure_topic of {topic!r} is running, one was cut short: run it again"
            )
        await asyncio.sleep(min(_CHANGE_PAUSE, left))

    async def _each(self, op: str, calls: dict[_Unit, Call]) -> dict[_Unit, Any]:
        """Run one call per unit, all in one round trip; the reply of each."""
        replies = await self._run(op, list(calls.values()))
        return dict(zip(calls, replies, strict=True))

    async def _trimmed_each(
        self, op: str, calls: dict[_Unit, Call], again: Callable[[Any], bool] | None = None
    ) -> dict[_Unit, Any]:
        """:meth:`_each` of a script that trims the history first (a bounded part per
        call), again for each unit whose call could not finish (its reply is 3, or
        ``again`` says so); the final replies."""
        replies: dict[_Unit, Any] = {}
        while calls:
            for unit, reply in (await self._each(op, calls)).items():
                if not (again(reply) if again else reply == _CALL_AGAIN):
                    replies[unit] = reply
                    del calls[unit]
        return replies

    # -- subscriptions -----------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        group: str,
        *,
        ordered: bool | None = None,
        history: float | None = None,
    ) -> None:
        """Make ``group`` a durable subscriber of ``topic`` (of each of its partitions);
        idempotent.

        The subscription keeps the options it was created with; other explicit options
        raise SubscriptionMismatch. A new one with ``history`` first copies the retained
        events in bounded steps (copy_history.lua) and joins the topic's groups when the
        copy has caught up; a copy a crash cut short goes on here.
        """
        topic, group = validate_topic(topic), validate_group(group)
        validate_history(history)
        await self._register(topic)
        asked = "" if ordered is None else ("1" if ordered else "0")
        wanted = "" if history is None else ("inf" if math.isinf(history) else repr(history))
        count, deadline = self._partitions.get(topic, 1), time.monotonic() + _CHANGE_WAIT
        while True:
            args: list[Arg] = [group, asked, wanted, self._now_arg(), _TRIM_STEP, count]
            script = load_script("subscribe")
            calls = {u: script.call(args, topic=self._topic_keys(u)) for u in _units(topic, count)}
            outcomes = await self._trimmed_each("subscribe", calls, _subscribe_again)
            moved = [r for r in outcomes.values() if _moved(r)]
            if not moved:
                break
            count = await self._follow(topic, any(map(_sealed, moved)), deadline, "subscribe")
        refused = [stored for outcome, stored in outcomes.values() if outcome == -1]
        if refused:
            stored = refused[0] == 1
            raise SubscriptionMismatch(
                f"group {group!r} subscribed to {topic!r} with ordered={stored}: "
                f"subscribe again without options or with ordered={stored} (a "
                "subscription keeps the options it was created with)"
            )
        await self._copy_histories(group, [u for u, (o, _) in outcomes.items() if o == _COPY])

    async def _carry_on_copy(self, unit: _Unit, group: str) -> None:
        try:
            await self._copy_histories(group, [unit])
        except TransportError as exc:  # the next claim tries again
            log.warning(
                "history copy of %s/%s failed, to be tried again: %s", unit.topic, group, exc
            )
        finally:
            self._copies.pop((unit, group), None)

    async def _copy_histories(self, group: str, units: Sequence[_Unit]) -> int:
        """Run the group's history copies in progress in ``units`` to their end, a step
        of each per round trip; how many events they copied."""
        script = load_script("copy_history")
        calls = {
            u: script.call(
                [group, _COPY_STEP], topic=self._topic_keys(u), group=self._group_keys(u, group)
            )
            for u in units
        }
        copied = 0
        while calls:
            for unit, (complete, count) in (await self._each("copy_history", calls)).items():
                copied += int(count)
                if complete:
                    del calls[unit]
        return copied

    # -- retention, history and partitions -----------------------------------------------

    async def configure_topic(
        self,
        topic: str,
        *,
        max_age: float | None = None,
        max_events: int | None = None,
        partitions: int | None = None,
    ) -> None:
        """Store ``topic``'s retention on each of its partitions and trim its history to
        it, in bounded steps; with ``partitions``, change its partition count first.

        A change seals every unit of the old layout (seal.lua), refusing with
        PartitionChangeRefused, and unsealing again, if any holds an event; then writes
        the units of the new layout, and deletes the old ones. A change cut short (the
        topic's own unit reads ``N>M``) is completed by the next configure_topic.
        """
        topic = validate_topic(topic)
        validate_retention(max_age, max_events)
        if partitions is not None:
            validate_partitions(partitions)
        # A count alone keeps the retention (None): the new units get the old ones'.
        retention: tuple[str, str] | None = (
            "" if max_age is None else repr(float(max_age)),
            "" if max_events is None else str(max_events),
        )
        if partitions is not None and max_age is None and max_events is None:
            retention = None
        layout = await self._layout(topic, "configure_topic")
        if layout.target is not None:
            await self._finish_change(topic, layout.current, layout.target, retention)
        count = layout.current if layout.target is None else layout.target
        if partitions is not None and partitions != count:
            sealed = await self._seal(topic, count, partitions)
            if count > 1:  # the change takes effect (a topic of 1 has sealed its own unit)
                seal = f"{count}>{partitions}"
                await self._guard(
                    "configure_topic", self._client().set(self._keys.topic(topic).layout, seal)
                )
            await self._finish_change(topic, count, partitions, retention, sealed)
            count = partitions
        elif partitions is not None and count > 1:
            # Units a change refused or cut short left sealed, before it took effect.
            await self._unseal(_units(topic, count), "")
        self._believe(topic, count)
        if retention is None:
            return
        script = load_script("configure_topic")
        args: list[Arg] = [*retention, self._now_arg(), _TRIM_STEP]
        calls = {u: script.call(args, topic=self._topic_keys(u)) for u in _units(topic, count)}
        await self._trimmed_each("configure_topic", calls)

    async def _seal(self, topic: str, count: int, partitions: int) -> dict[_Unit, _Sealed]:
        """Seal every unit of ``topic``'s layout of ``count`` for a change to
        ``partitions``: each unit's groups, ordered groups and retention (none for a unit
        that is gone: a change cut short deleted it). Raises PartitionChangeRefused,
        after unsealing those it sealed, if any unit holds an event."""
        seal, script = f"{count}>{partitions}", load_script("seal")
        groups = {u: self._groups.get(u, ()) for u in _units(topic, count)}
        sealed: dict[_Unit, _Sealed] = {}
        held: dict[str, int] = {}
        stored = [0, 0, 0]  # bodies, retained entries, history copies
        refused, rounds = False, 0
        while groups:
            calls = {
                u: script.call(
                    [self._now_arg(), _TRIM_STEP, count, seal, len(names), *names],
                    topic=self._topic_keys(u),
                    groups=[self._group_keys(u, g) for g in names],
                )
                for u, names in groups.items()
            }
            for unit, reply in (await self._each("configure_topic", calls)).items():
                status, rest = reply[0], reply[1:]
                if status == b"groups":
                    rounds += 1
                    if rounds > _PUBLISH_ROUNDS * len(calls):
                        raise TransportError(
                            f"configure_topic of {topic!r} failed: its groups kept changing"
                        )
                    groups[unit] = tuple(sorted(_text(g) for g in rest))
                    continue
                if status == b"again":
                    continue
                names = groups.pop(unit)
                if status == b"sealed":
                    max_age, max_events, *flags = rest
                    kept = (_text(max_age), _text(max_events))
                    sealed[unit] = _Sealed(names, {_text(g) for g in flags}, kept)
                elif status == b"held":
                    refused = True
                    for i, n in enumerate(rest[:3]):
                        stored[i] += int(n)
                    for name, n in zip(names, rest[3:], strict=True):
                        held[name] = held.get(name, 0) + int(n)
                else:  # the unit is gone (its layout key too): nothing of it to carry
                    sealed[unit] = _Sealed((), set(), None)
        if refused:
            await self._unseal(list(sealed), seal)
            raise partition_change_refused(topic, count, partitions, _holding(held, *stored))
        return sealed

    async def _unseal(self, units: Sequence[_Unit], seal: str) -> None:
        """Open the ``units`` sealed by ``seal`` ('' for any) again, at their count."""
        script = load_script("unseal")
        calls = {
            u: script.call(
                [seal, "" if u.partitions == 1 else u.partitions], topic=self._topic_keys(u)
            )
            for u in units
        }
        await self._each("configure_topic", calls)

    async def _finish_change(
        self,
        topic: str,
        count: int,
        partitions: int,
        retention: tuple[str, str] | None,
        sealed: dict[_Unit, _Sealed] | None = None,
    ) -> None:
        """Complete the change of ``topic`` from ``count`` partitions, all sealed, to
        ``partitions``: write the new units, delete the old ones (adding their counters
        to the new first unit), then store the new count in the topic's own unit.

        Every step may run again, so a change cut short is completed by a later call;
        it then seals what is left of the old units again for their groups. With
        ``retention`` None the new units get the old ones' (a unit left alone keeps its
        own, if no old one is left to say).
        """
        if sealed is None:
            sealed = await self._seal(topic, count, partitions)
        seal = f"{count}>{partitions}"
        names = sorted({g for s in sealed.values() for g in s.groups})
        ordered = {g for s in sealed.values() for g in s.ordered}
        if retention is None:
            retention = next((s.retention for s in sealed.values() if s.retention), None)
        limits: list[Arg] = ["0", "", ""] if retention is None else ["1", *retention]
        opening: list[Arg] = ["" if partitions == 1 else partitions, *limits, len(names)]
        for name in names:
            opening += (name, "1" if name in ordered else "0")
        script = load_script("open_unit")
        new = _units(topic, partitions)
        await self._each(
            "configure_topic", {u: script.call(opening, topic=self._topic_keys(u)) for u in new}
        )
        script = load_script("drop_unit")
        calls = {
            u: script.call(
                [seal, "1" if count == 1 else "0", len(groups)],
                topic=self._topic_keys(u),
                groups=[self._group_keys(u, g) for g in groups],
            )
            for u, (groups, _, _) in sealed.items()
        }
        published, acked = 0, dict.fromkeys(names, 0)
        for unit, (_, events, *counts) in (await self._each("configure_topic", calls)).items():
            published += int(events)
            for name, n in zip(sealed[unit].groups, counts, strict=True):
                acked[name] += int(n)
        # The counters for rates go on in the new layout's first unit (at most once: the
        # old units are gone with theirs).
        redis, first = self._client(), new[0]
        async with redis.pipeline(transaction=False) as pipe:
            if published:
                pipe.incrby(self._topic_keys(first).published, published)
            for name, n in acked.items():
                if n:
                    pipe.incrby(self._group_keys(first, name).acked, n)
            layout = self._keys.topic(topic).layout
            if partitions == 1:
                pipe.delete(layout)
            else:
                pipe.set(layout, partitions)
            await self._guard("configure_topic", pipe.execute())
        self._believe(topic, partitions)

    async def topic_stats(self, topic: str) -> TopicStats:
        """``topic``'s retention and history, summed over its partitions, trimmed first
        (in bounded steps)."""
        topic = validate_topic(topic)
        units = await self._current_units(topic, "topic_stats")
        script = load_script("topic_stats")
        args: list[Arg] = [self._now_arg(), _TRIM_STEP]
        calls = {u: script.call(args, topic=self._topic_keys(u)) for u in units}
        replies = list((await self._trimmed_each("topic_stats", calls)).values())
        max_age, max_events = replies[0][:2]
        ages = [float(age) for _, _, _, age, _ in replies if age]
        return TopicStats(
            topic,
            float(max_age) if max_age else None,
            int(max_events) if max_events else None,
            sum(int(retained) for _, _, retained, _, _ in replies),
            max(ages) if ages else None,
            sum(int(published) for *_, published in replies),
            len(units),
        )

    async def rewind(self, topic: str, group: str, *, history: float, dry_run: bool = False) -> int:
        """Copy the retained events again into ``group``, in bounded steps; how many."""
        topic, group = validate_topic(topic), validate_group(group)
        validate_history(history, optional=False)
        wanted = "inf" if math.isinf(history) else repr(history)
        units = await self._current_units(topic, "rewind")
        if dry_run:
            return await self._count_history(units, group, wanted)
        script = load_script("rewind")
        args: list[Arg] = [group, wanted, self._now_arg(), _TRIM_STEP]
        calls = {u: script.call(args, topic=self._topic_keys(u)) for u in units}
        outcomes = await self._trimmed_each("rewind", calls)
        if all(outcome == -1 for outcome in outcomes.values()):
            raise ValueError(f"group {group!r} does not subscribe {topic!r}: nothing to rewind")
        return await self._copy_histories(group, [u for u, o in outcomes.items() if o == _COPY])

    async def unsubscribe(self, topic: str, group: str) -> bool:
        """End ``group``'s subscription to ``topic``, dropping its copies; idempotent.

        The first script call on each partition removes the subscription; calls of
        bounded work then free the bodies no other group holds and delete every key of
        the group. The topic stays in the registry of topics, which lists it again only
        when a group subscribes.
        """
        topic, group = validate_topic(topic), validate_group(group)
        units = await self._current_units(topic, "unsubscribe")
        script = load_script("unsubscribe")
        calls = {
            u: script.call(
                [group, _TRIM_STEP], topic=self._topic_keys(u), group=self._group_keys(u, group)
            )
            for u in units
        }
        removed = False
        while calls:
            for unit, (was, done) in (await self._each("unsubscribe", calls)).items():
                removed = removed or _flag(was)
                if done:
                    del calls[unit]
        for unit in units:
            self._due.pop((group, unit), None)
        return removed

    async def _register(self, topic: str) -> None:
        """Add ``topic`` to the registry behind topics(), which lives outside its slot.

        Before the group: a crash in between leaves a topic without groups, which
        topics() leaves out, rather than a subscription topics() does not list.
        """
        await self._guard("subscribe", self._client().sadd(self._keys.topics, topic))

    async def _count_history(self, units: Sequence[_Unit], group: str, history: str) -> int:
        """What a rewind would deliver now, read in bounded steps; nothing changes."""
        now = self._now_arg()
        cursors: dict[_Unit, Arg] = dict.fromkeys(units, "")
        script = load_script("count_history")
        count, subscribed = 0, False
        while cursors:
            calls = {
                u: script.call(
                    [group, history, cursor, _COPY_STEP, now],
                    topic=self._topic_keys(u),
                    group=self._group_keys(u, group),
                )
                for u, cursor in cursors.items()
            }
            for unit, reply in (await self._each("rewind", calls)).items():
                if reply == -1:
                    del cursors[unit]
                    continue
                subscribed = True
                cursor, part = reply
                count += int(part)
                if cursor:
                    cursors[unit] = cursor
                else:
                    del cursors[unit]
        if not subscribed:
            topic = units[0].topic
            raise ValueError(f"group {group!r} does not subscribe {topic!r}: nothing to rewind")
        return count

    async def groups(self, topic: str) -> list[str]:
        """The groups subscribed to ``topic`` (to any of its partitions), sorted."""
        topic = validate_topic(topic)
        own = self._keys.topic(topic)
        async with self._client().pipeline(transaction=False) as pipe:
            pipe.get(own.layout)
            pipe.smembers(own.groups)
            raw, members = await self._guard("groups", pipe.execute())
        count = _parse_layout(topic, raw).current
        self._believe(topic, count)
        if count > 1:
            async with self._client().pipeline(transaction=False) as pipe:
                for unit in _units(topic, count):
                    pipe.smembers(self._topic_keys(unit).groups)
                members = set().union(*await self._guard("groups", pipe.execute()))
        return sorted(_text(m) for m in members)

    async def topics(self) -> list[str]:
        """Every topic with at least one subscribed group, sorted."""
        redis = self._client()
        names = sorted(
            _text(m) for m in await self._guard("topics", redis.smembers(self._keys.topics))
        )
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                own = self._keys.topic(name)
                pipe.scard(own.groups)
                pipe.get(own.layout)
            replies = await self._guard("topics", pipe.execute())
        counts = dict(zip(names, replies[::2], strict=True))
        partitioned = {
            name: _parse_layout(name, raw).current
            for name, raw in zip(names, replies[1::2], strict=True)
            if raw is not None
        }
        units = [u for name, n in partitioned.items() if n > 1 for u in _units(name, n)]
        if units:
            async with redis.pipeline(transaction=False) as pipe:
                for unit in units:
                    pipe.scard(self._topic_keys(unit).groups)
                for unit, n in zip(units, await self._guard("topics", pipe.execute()), strict=True):
                    counts[unit.topic] += n
        return [name for name in names if counts[name]]

    # -- publish -----------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        events: Sequence[tuple[str, bytes]],
        *,
        keys: Sequence[str | None] | None = None,
        dedup_window: float = 0.0,
        connection: object | None = None,
    ) -> int:
        """Append events to every subscribed group's READY queue: one atomic script per
        partition, all in one round trip.

        Ids the partition still holds, or published within their dedup window, are
        skipped. Returns the number of copies enqueued. ``connection`` is refused
        (TypeError): Redis has no caller's transaction to write in.
        """
        if connection is not None:
            raise TypeError(
                "RedisTransport cannot publish on a caller's connection (connection=...): only a "
                "transport over a database, such as PostgreSQL, writes in the caller's "
                "transaction"
            )
        if dedup_window < 0:
            raise ValueError(f"dedup_window must not be negative, got {dedup_window}")
        if keys is not None and len(keys) != len(events):
            raise ValueError(f"{len(keys)} keys for {len(events)} events")
        self._keys.topic(topic)  # validates the name (once: the keys are cached)
        stride = 2 if keys is None else 3
        args: list[Arg] = []
        for i, (event_id, body) in enumerate(events):
            if len(body) > self._max_body_bytes:
                raise EventTooLarge(
                    f"event {event_id!r} is {len(body)} bytes; this Redis transport accepts "
                    f"at most {self._max_body_bytes} (option max_body_bytes)"
                )
            if keys is None:
                args += (event_id, body)
            else:
                key = keys[i]
                args += (event_id, body, "" if key is None else validate_key(key))
        count = self._partitions.get(topic, 1)
        pending: Sequence[int] = range(len(events))
        copies, rounds, deadline = 0, 0, time.monotonic() + _CHANGE_WAIT
        script = load_script("publish")
        while True:
            parts = self._partitioned(topic, count, events, keys, pending)
            calls = []
            for unit, positions in parts.items():
                groups = self._groups.get(unit, ())
                if len(positions) == len(events):
                    values = args
                else:
                    values = [v for i in positions for v in args[i * stride : (i + 1) * stride]]
                calls.append(
                    script.call(
                        [
                            self._now_arg(),
                            repr(dedup_window),
                            count,
                            len(groups),
                            *groups,
                            stride,
                            *values,
                        ],
                        topic=self._topic_keys(unit),
                        groups=[self._group_keys(unit, group) for group in groups],
                    )
                )
            replies = await self._run("publish", calls)
            left: list[int] = []
            moved: list[Any] = []
            for (unit, positions), reply in zip(parts.items(), replies, strict=True):
                if isinstance(reply, int):
                    copies += reply
                    continue
                left += positions
                if _moved(reply):
                    moved.append(reply)
                else:
                    self._groups[unit] = tuple(sorted(_text(g) for g in reply))
            if not left:
                return copies
            pending = sorted(left)  # publish order, within each partition
            if moved:
                count = await self._follow(topic, any(map(_sealed, moved)), deadline, "publish")
            else:
                rounds += 1
                if rounds >= _PUBLISH_ROUNDS:
                    raise TransportError(f"publish to {topic!r} failed: its groups kept changing")

    @staticmethod
    def _partitioned(
        topic: str,
        count: int,
        events: Sequence[tuple[str, bytes]],
        keys: Sequence[str | None] | None,
        positions: Sequence[int],
    ) -> dict[_Unit, Sequence[int]]:
        """The positions of ``events`` per unit of a layout of ``count`` (partition_of)."""
        if count == 1:
            return {_Unit(topic, 0, 1): positions}
        parts: dict[_Unit, list[int]] = {}
        for i in positions:
            partition = partition_of(events[i][0], None if keys is None else keys[i], count)
            parts.setdefault(_Unit(topic, partition, count), []).append(i)
        return dict(parts)

    # -- claim and wait ------------------------------------------------------------------

    def _claim_call(
        self,
        unit: _Unit,
        group: str,
        count: int,
        lease: float,
        max_attempts: int,
        may_isolate: bool,
    ) -> Call:
        token = secrets.token_hex(12)
        if unit.partitions > 1:
            # The receipt names its unit, so that ack and the others find it (_unit_of).
            token = f"{unit.partition}.{unit.partitions}.{token}"
        args: list[Arg] = [
            self._now_arg(),
            repr(lease),
            count,
            max_attempts,
            token,
            "1" if may_isolate else "0",
            group,
            unit.partitions,
        ]
        return load_script("claim").call(
            args, topic=self._topic_keys(unit), group=self._group_keys(unit, group)
        )

    def _messages(
        self, unit: _Unit, group: str, reply: list[Any]
    ) -> tuple[list[Message], bool, int]:
        """A claim script's messages, whether it stopped before a suspect, and how many
        events it left READY."""
        now, deadline, next_due, stopped, copying, left, *rows = reply
        self._note_due(group, unit, now, next_due)
        if copying and (unit, group) not in self._copies:
            # A history copy a crash cut short: the group gets live events only through
            # it, so a consumer of the group carries it on.
            task = asyncio.create_task(self._carry_on_copy(unit, group))
            self._copies[unit, group] = task
        lease_deadline = float(deadline)
        topic, text = unit.topic, _text
        # Six fields per event; positional arguments and no index arithmetic: this runs
        # once per claimed event.
        messages = [
            Message(
                Receipt(topic, group, text(event_id), text(token)),
                body,
                int(attempt),
                lease_deadline,
                text(key) if key else None,
                isolated == 1,
            )
            for event_id, token, attempt, isolated, key, body in zip(*[iter(rows)] * 6, strict=True)
        ]
        return messages, _flag(stopped), int(left)

    def _rotated(self, units: list[_Unit]) -> list[_Unit]:
        """``units`` from the next one in turn: the first ones get the odd events of a
        share that does not divide evenly, and the first may hand out a suspect."""
        if len(units) < 2:
            return units
        self._turn = (self._turn + 1) % len(units)
        return units[self._turn :] + units[: self._turn]

    async def claim(
        self,
        group: str,
        topics: Sequence[str],
        *,
        max_count: int,
        lease: float,
        max_attempts: int,
    ) -> list[Message]:
        """Lease up to ``max_count`` READY events of ``group`` from ``topics``.

        Each partition of each topic is a queue of its own (a topic of one partition is
        one), with one claim script per queue. ``max_count`` is shared out between them
        all, starting from the next queue in turn; one round trip asks every queue (those
        whose share is 0 only count what they have), and a second asks the queues that
        said they have more for what is left, so one busy queue can still fill the whole
        claim, in two round trips (more only while queues bury events, attempts used up,
        or lose them to other consumers). A queue of a topic whose partition count
        changed refuses its call; the topic's units are learned again and asked the
        same way.

        Only the first script of a claim that has nothing yet may hand out a suspect
        (isolated) event; the others stop before one. If the first did while others took
        events, those are released again (uncounted), so the isolated event goes alone;
        if every queue stopped before a suspect, one more call takes one.
        """
        group = validate_group(group)
        names = list(dict.fromkeys(validate_topic(t) for t in topics))
        if lease <= 0:
            raise ValueError(f"lease must be positive, got {lease}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        messages: list[Message] = []
        if max_count < 1:
            return messages
        blocked: list[_Unit] = []  # queues whose script stopped before a suspect
        units = self._rotated([u for t in names for u in self._units_of(t)])
        for _ in range(_CLAIM_LAYOUT_ROUNDS):
            moved: dict[str, bool] = {}  # topic -> whether a unit of it was sealed
            more: dict[_Unit, int] = {}  # queue -> events it said it left READY
            asked = units
            for round_ in range(_CLAIM_ROUNDS):
                remaining = max_count - len(messages)
                # The first round asks every queue (those given 0 only count theirs);
                # the next ones only those that have more, at most what they have.
                if round_ == 0:
                    quotas = _share(remaining, [remaining] * len(asked))
                else:
                    quotas = _share(remaining, [more[u] for u in asked])
                    asked = [u for u, q in zip(asked, quotas, strict=True) if q > 0]
                    quotas = [q for q in quotas if q > 0]
                first = not messages
                calls = [
                    self._claim_call(u, group, q, lease, max_attempts, first and n == 0)
                    for n, (u, q) in enumerate(zip(asked, quotas, strict=True))
                ]
                replies = await self._run_partial("claim", calls)
                failed = [r for r in replies if isinstance(r, TransportError)]
                if failed and (len(failed) == len(replies) and not messages):
                    raise failed[0]
                for unit, reply in zip(asked, replies, strict=True):
                    more.pop(unit, None)
                    if isinstance(reply, TransportError):
                        # Another queue's master answered: hand out what it leased, and
                        # try this queue again at the next claim.
                        log.warning("claim of %s/%s failed: %s", unit.topic, group, reply)
                        continue
                    if _moved(reply):
                        moved[unit.topic] = moved.get(unit.topic, False) or _sealed(reply)
                        continue
                    got, stopped, rest = self._messages(unit, group, reply)
                    messages += got
                    if stopped:
                        blocked.append(unit)
                    elif rest > 0:
                        more[unit] = rest
                isolated = [m for m in messages if m.isolated]
                if isolated:
                    return await self._alone(isolated[0], messages)
                # A queue's count may include events its claim buries instead (attempts
                # used up) or that another consumer takes first: then ask again.
                if len(messages) >= max_count or not more:
                    break
                asked = list(more)
            if not moved or len(messages) >= max_count:
                break
            units = await self._relearn(moved)
        if not messages and blocked:
            call = self._claim_call(blocked[0], group, 1, lease, max_attempts, True)
            [reply] = await self._run("claim", [call])
            if not _moved(reply):
                messages, _, _ = self._messages(blocked[0], group, reply)
        return messages

    async def _relearn(self, moved: dict[str, bool]) -> list[_Unit]:
        """The units of the topics a claim found with another partition count, read
        again; a topic whose count is being changed has none for now."""
        units: list[_Unit] = []
        for topic, sealed in moved.items():
            layout = await self._layout(topic, "claim")
            if layout.target is None and not (
                sealed and layout.current == self._partitions.get(topic, 1)
            ):
                self._believe(topic, layout.current)
                units += _units(topic, layout.current)
        return self._rotated(units)

    async def _alone(self, isolated: Message, claimed: list[Message]) -> list[Message]:
        """Hand out ``isolated`` alone: release the events claimed beside it.

        Should the release fail, the isolated event is still handed out (it is leased
        either way); the others come back when their leases expire.
        """
        others = [m.receipt for m in claimed if m is not isolated]
        if others:
            try:
                await self.release(others)
            except TransportError as exc:
                log.warning(
                    "could not give back %d events claimed beside an isolated one; "
                    "they return when their leases expire: %s",
                    len(others),
                    exc,
                )
        return [isolated]

    async def _poll(self, group: str, units: Sequence[_Unit]) -> int:
        """Run the poll script on ``units``: how many events are READY for ``group``."""
        calls = [
            load_script("poll").call([self._now_arg()], group=self._group_keys(u, group))
            for u in units
        ]
        ready = 0
        for unit, (count, now, next_due) in zip(units, await self._run("wait", calls), strict=True):
            self._note_due(group, unit, now, next_due)
            ready += count
        return int(ready)

    async def wait(self, group: str, topics: Sequence[str], timeout: float) -> bool:
        """Block on the group's marker lists (one per partition of each topic) until work
        may be there, or timeout.

        Publishes, nacks and replays set a marker, and claims delete it once READY is
        empty. On one marker the waiter moves it onto its own list (BLMOVE), which
        wakes it without taking the marker, so every idle consumer of the group wakes and
        returns at once: the claim that follows requeues due work and clears the marker
        (a wake-up for a delayed nack is spurious, and that claim learns the due time). On
        several markers one BLPOP takes one, and the poll script of its queue puts it
        back while READY has events, so the wake-up is passed on. The waiter never blocks
        past the earliest lease deadline or due retry it has heard of, and at most
        ``sweep_interval`` at a time, after which it runs the poll script, which requeues
        expired leases of consumers that died.
        """
        group = validate_group(group)
        names = list(dict.fromkeys(validate_topic(t) for t in topics))
        self._client()
        blocking, wakeups = self._blocking, self._wakeups
        if not names:
            await asyncio.sleep(max(timeout, 0.0))
            return False
        units = [u for t in names for u in self._units_of(t)]
        markers = {self._group_keys(u, group).marker: u for u in units}
        if wakeups is not None:
            await wakeups.watch(markers)
            # A wake-up message is a hint, not the marker's state: work left READY
            # before this wait (by a waiter that woke and did not claim, say) sent none.
            if await self._poll(group, units):
                return True
        end = time.monotonic() + max(timeout, 0.0)
        while True:
            until_due = self._until_due(group, units)
            if until_due is not None and until_due <= 0:
                # Something fell due (a lease, perhaps one since extended, or a retry):
                # look, rather than wake the caller for nothing; the look also learns
                # what falls due next.
                if await self._poll(group, units):
                    return True
                continue
            block = end - time.monotonic()
            if block <= 0:
                return False
            sweep = block > self._sweep_interval
            block = min(block, self._sweep_interval)
            if until_due is not None:
                block = min(block, until_due)
            # A blocking timeout of 0 means forever: never pass less than a millisecond.
            block = max(block, 0.001)
            if wakeups is not None:
                if await wakeups.wait(markers, block):
                    return True
            elif len(markers) == 1:
                assert blocking is not None  # set together with _redis on one node
                [marker] = markers
                # Redis takes fractional seconds here; redis-py's stub says int.
                move = blocking.blmove(marker, marker, block, "LEFT", "RIGHT")  # type: ignore[arg-type]
                moved = await self._guard("wait", move)
                if moved is not None:
                    return True
            else:
                assert blocking is not None
                popped = await self._guard("wait", blocking.blpop(list(markers), timeout=block))
                if popped is not None:
                    if await self._poll(group, [markers[_text(popped[0])]]):
                        return True
                    continue
            if sweep and await self._poll(group, units):
                return True

    # -- settling deliveries -------------------------------------------------------------

    def _by_queue(self, receipts: Sequence[Receipt]) -> dict[tuple[_Unit, str], list[int]]:
        """Receipt positions grouped by (unit, group): one script call per queue."""
        queues: dict[tuple[_Unit, str], list[int]] = {}
        for i, r in enumerate(receipts):
            unit = _unit_of(r)
            self._group_keys(unit, r.group)  # validates each distinct pair once (cached)
            queues.setdefault((unit, r.group), []).append(i)
        return queues

    async def _settle(
        self, op: str, receipts: Sequence[Receipt], script: Script, lease: float | None = None
    ) -> list[bool]:
        """Ack or extend ``receipts``: one script call per queue, all in one round trip."""
        queues = self._by_queue(receipts)
        calls = []
        for (unit, group), positions in queues.items():
            args: list[Arg] = [self._now_arg()]
            if lease is not None:
                args.append(repr(lease))
            for i in positions:
                args += (receipts[i].event_id, receipts[i].token)
            t, g = self._topic_keys(unit), self._group_keys(unit, group)
            calls.append(script.call(args, topic=t, group=g))
        answers = [False] * len(receipts)
        for positions, reply in zip(queues.values(), await self._run(op, calls), strict=True):
            for i, flag in zip(positions, reply, strict=True):
                answers[i] = _flag(flag)
        return answers

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        """Mark leased events DONE; False for each stale receipt."""
        return await self._settle("ack", receipts, load_script("ack"))

    async def extend(self, receipts: Sequence[Receipt], lease: float) -> list[bool]:
        """Make each live lease last at least ``lease`` s from now; False where stale."""
        if lease <= 0:
            raise ValueError(f"lease must be positive, got {lease}")
        return await self._settle("extend", receipts, load_script("extend"), lease)

    async def release(self, receipts: Sequence[Receipt]) -> list[bool]:
        """Give leased events back to the front of READY, attempts uncounted."""
        return await self._settle("release", receipts, load_script("release"))

    async def nack(self, receipt: Receipt, *, delay: float = 0.0, error: str | None = None) -> bool:
        """Give a leased event back: to the front of READY, or DELAYED for ``delay`` s."""
        if delay < 0:
            raise ValueError(f"delay must not be negative, got {delay}")
        unit, group = _unit_of(receipt), receipt.group
        args: list[Arg] = [
            self._now_arg(),
            repr(delay),
            receipt.event_id,
            receipt.token,
        ]
        if error is not None:
            args.append(_stored_text(error))
        call = load_script("nack").call(args, group=self._group_keys(unit, group))
        [done] = await self._run("nack", [call])
        if _flag(done) and delay > 0:
            due = self._local_now() + delay
            self._due[(group, unit)] = min(self._due.get((group, unit), due), due)
        return _flag(done)

    async def kill(self, receipt: Receipt, *, reason: str, error: str | None = None) -> bool:
        """Move a leased event to DEAD with ``reason``; False (no change) if stale."""
        args: list[Arg] = [
            self._now_arg(),
            receipt.event_id,
            receipt.token,
            _stored_text(reason),
        ]
        if error is not None:
            args.append(_stored_text(error))
        unit = _unit_of(receipt)
        call = load_script("kill").call(
            args, topic=self._topic_keys(unit), group=self._group_keys(unit, receipt.group)
        )
        [done] = await self._run("kill", [call])
        return _flag(done)

    # -- dead letters and stats ----------------------------------------------------------

    async def dead_letters(
        self, topic: str, group: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead events of (topic, group), oldest death first, from ``offset``.

        Over several partitions, each gives its oldest ``offset + limit``, merged by the
        time they died.
        """
        topic, group = validate_topic(topic), validate_group(group)
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        units = await self._current_units(topic, "dead_letters")
        window: list[Arg] = [limit, offset] if len(units) == 1 else [offset + limit, 0]
        script = load_script("dead_letters")
        calls = {
            u: script.call(window, topic=self._topic_keys(u), group=self._group_keys(u, group))
            for u in units
        }
        letters = [
            self._dead_letter(topic, group, rows, i)
            for rows in (await self._each("dead_letters", calls)).values()
            for i in range(0, len(rows), 3)
        ]
        if len(units) == 1:
            return letters
        letters.sort(key=lambda letter: letter.died_at)  # stable: each unit's own order kept
        return letters[offset : offset + max(limit, 0)]

    @staticmethod
    def _dead_letter(topic: str, group: str, rows: list[Any], i: int) -> DeadLetter:
        record = _dead_record(rows[i + 1])
        error = record.get("error")
        return DeadLetter(
            topic=topic,
            group=group,
            event_id=_text(rows[i]),
            body=rows[i + 2],
            reason=_readable(str(record.get("reason", "unknown"))),
            error=None if error is None else _readable(str(error)),
            attempts=int(record.get("attempts", 0)),
            died_at=float(record.get("died_at", 0.0)),
        )

    async def replay_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """Move dead events (all, or those listed) to the back of READY, attempts reset."""
        topic, group = validate_topic(topic), validate_group(group)
        script = load_script("replay_dead")
        return await self._for_dead(
            "replay_dead",
            topic,
            lambda u, dead: script.call(
                [group, *dead], topic=self._topic_keys(u), group=self._group_keys(u, group)
            ),
            event_ids,
        )

    async def purge_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead events (all, or those listed) for good; returns how many."""
        topic, group = validate_topic(topic), validate_group(group)
        script = load_script("purge_dead")
        return await self._for_dead(
            "purge_dead",
            topic,
            lambda u, dead: script.call(
                dead, topic=self._topic_keys(u), group=self._group_keys(u, group)
            ),
            event_ids,
        )

    async def _for_dead(
        self,
        op: str,
        topic: str,
        call: Callable[[_Unit, list[Arg]], Call],
        event_ids: Sequence[str] | None,
    ) -> int:
        """Run replay_dead or purge_dead on every partition: on every dead event, or on
        those listed (each partition finds those it holds).

        Every dead event goes by batches of ``_DEAD_BATCH``, one script call each, so that
        no call holds Redis up for long however many are dead; a partition is asked again
        while some are left, but never for more than were dead at its first call: events
        that die meanwhile (a replayed one failing again, say) wait for the next replay.
        """
        if event_ids is not None and not event_ids:
            return 0
        units = await self._current_units(topic, op)
        calls = {u: call(u, _dead_args(event_ids)) for u in units}
        done = 0
        budget: dict[_Unit, int] = {}
        while calls:
            for unit, (count, left) in (await self._each(op, calls)).items():
                done += int(count)
                budget.setdefault(unit, int(count) + int(left))
                budget[unit] -= int(count)
                if event_ids is not None or not int(count) or not int(left) or budget[unit] <= 0:
                    del calls[unit]
                else:  # the last batch stops short of those that died meanwhile
                    calls[unit] = call(unit, _dead_args(None, min(_DEAD_BATCH, budget[unit])))
        return done

    async def stats(self, topic: str, group: str) -> QueueStats:
        """Counts per state, summed over the partitions, after applying expired leases
        and due retries."""
        topic, group = validate_topic(topic), validate_group(group)
        units = await self._current_units(topic, "stats")
        script = load_script("stats")
        calls = {u: script.call([self._now_arg()], group=self._group_keys(u, group)) for u in units}
        totals = [0] * 5
        for unit, reply in (await self._each("stats", calls)).items():
            ready, leased, delayed, dead, now, next_due, acked = reply
            self._note_due(group, unit, now, next_due)
            for i, n in enumerate((ready, leased, delayed, dead, acked)):
                totals[i] += int(n)
        return QueueStats(topic, group, *totals)


if TYPE_CHECKING:
    # mypy holds the class to every method of the protocol, signatures included.
    _checked: type[Transport] = RedisTransport
