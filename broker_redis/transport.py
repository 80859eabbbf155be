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
import secrets
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.maint_notifications import MaintNotificationsConfig

from broker_core.clock import Clock
from broker_core.errors import EventTooLarge, SubscriptionMismatch, TransportError
from broker_core.names import validate_group, validate_key, validate_topic
from broker_core.retention import validate_history, validate_retention
from broker_core.transport import DeadLetter, Message, QueueStats, Receipt, TopicStats
from broker_core.urls import redact
from broker_redis.cluster import ClusterScriptRunner, ClusterSettings, parse_cluster_url
from broker_redis.errors import REDIS_ERRORS, transport_error
from broker_redis.keys import Keys
from broker_redis.options import DEFAULT_URL, OPTION_NAMES, parse_options
from broker_redis.packing import pack_with_hiredis
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


# The operations whose writes a failover must not lose: with min_replicas, each waits
# until that many replicas have them (a lost claim or extend only means a redelivery).
_DURABLE_OPS = frozenset(
    {"publish", "subscribe", "ack", "nack", "kill", "configure_topic", "copy_history"}
)

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


def _dead_args(event_ids: Sequence[str] | None) -> list[Arg]:
    """ARGV of replay_dead and purge_dead: every dead event, or those listed."""
    return ["all"] if event_ids is None else ["ids", *event_ids]


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
        # The groups this process last saw subscribed to each topic: publish passes them
        # to its script, which answers with the real set if they changed.
        self._groups: dict[str, tuple[str, ...]] = {}
        # (group, topic) -> local time (see _local_now) of the earliest lease deadline or
        # due retry the scripts reported: a waiter must not sleep past it.
        self._due: dict[tuple[str, str], float] = {}
        # History copies this transport carries on for its consumers (see _messages).
        self._copies: dict[tuple[str, str], asyncio.Task[None]] = {}

    @property
    def max_body_bytes(self) -> int:
        """The largest body ``publish`` stores (option ``max_body_bytes``)."""
        return self._max_body_bytes

    def __repr__(self) -> str:
        return f"RedisTransport({self._safe_url!r}, key_prefix={self._keys.prefix!r})"

    # -- connections and errors ----------------------------------------------------------

    def _pool(self, socket_timeout: float) -> BlockingConnectionPool:
        pool = BlockingConnectionPool.from_url(
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
        copies = list(self._copies.values())
        for task in copies:
            task.cancel()
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

    def _note_due(self, group: str, topic: str, now: bytes, next_due: bytes) -> None:
        """Remember when (group, topic) next needs a look, from a script's now/next_due."""
        if next_due:
            self._due[(group, topic)] = self._local_now() + float(next_due) - float(now)
        else:
            self._due.pop((group, topic), None)

    def _until_due(self, group: str, topics: Sequence[str]) -> float | None:
        dues = [self._due[(group, t)] for t in topics if (group, t) in self._due]
        return min(dues) - self._local_now() if dues else None

    # -- subscriptions -----------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        group: str,
        *,
        ordered: bool | None = None,
        history: float | None = None,
    ) -> None:
        """Make ``group`` a durable subscriber of ``topic``; idempotent.

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
        args: list[Arg] = [group, asked, wanted, self._now_arg(), _TRIM_STEP]
        call = load_script("subscribe").call(args, topic=self._keys.topic(topic))
        while True:
            [(outcome, stored)] = await self._run("subscribe", [call])
            if outcome != _CALL_AGAIN:
                break
        if outcome == -1:
            raise SubscriptionMismatch(
                f"group {group!r} subscribed to {topic!r} with ordered={stored == 1}: "
                f"subscribe again without options or with ordered={stored == 1} (a "
                "subscription keeps the options it was created with)"
            )
        if outcome == _COPY:
            await self._copy_history(topic, group)

    async def _carry_on_copy(self, topic: str, group: str) -> None:
        try:
            await self._copy_history(topic, group)
        except TransportError as exc:  # the next claim tries again
            log.warning("history copy of %s/%s failed, to be tried again: %s", topic, group, exc)
        finally:
            self._copies.pop((topic, group), None)

    async def _copy_history(self, topic: str, group: str) -> int:
        """Run the group's history copy in progress to its end; how many it copied."""
        call = load_script("copy_history").call(
            [group, _COPY_STEP], topic=self._keys.topic(topic), group=self._keys.group(topic, group)
        )
        copied = 0
        while True:
            [(complete, count)] = await self._run("copy_history", [call])
            copied += int(count)
            if complete:
                return copied

    async def _trimmed(self, op: str, call: Call) -> Any:
        """Run a script that trims the history first (a bounded part per call) again
        until it could finish; its reply."""
        while True:
            [reply] = await self._run(op, [call])
            if reply != _CALL_AGAIN:
                return reply

    # -- retention and history -------------------------------------------------------------

    async def configure_topic(
        self, topic: str, *, max_age: float | None = None, max_events: int | None = None
    ) -> None:
        """Store ``topic``'s retention and trim its history to it, in bounded steps."""
        topic = validate_topic(topic)
        validate_retention(max_age, max_events)
        args: list[Arg] = [
            "" if max_age is None else repr(float(max_age)),
            "" if max_events is None else max_events,
            self._now_arg(),
            _TRIM_STEP,
        ]
        call = load_script("configure_topic").call(args, topic=self._keys.topic(topic))
        await self._trimmed("configure_topic", call)

    async def topic_stats(self, topic: str) -> TopicStats:
        """``topic``'s retention and history, trimmed first (in bounded steps)."""
        topic = validate_topic(topic)
        call = load_script("topic_stats").call(
            [self._now_arg(), _TRIM_STEP], topic=self._keys.topic(topic)
        )
        max_age, max_events, retained, age, published = await self._trimmed("topic_stats", call)
        return TopicStats(
            topic,
            float(max_age) if max_age else None,
            int(max_events) if max_events else None,
            int(retained),
            float(age) if age else None,
            int(published),
        )

    async def rewind(self, topic: str, group: str, *, history: float, dry_run: bool = False) -> int:
        """Copy the retained events again into ``group``, in bounded steps; how many."""
        topic, group = validate_topic(topic), validate_group(group)
        validate_history(history, optional=False)
        wanted = "inf" if math.isinf(history) else repr(history)
        if dry_run:
            return await self._count_history(topic, group, wanted)
        call = load_script("rewind").call(
            [group, wanted, self._now_arg(), _TRIM_STEP], topic=self._keys.topic(topic)
        )
        outcome = await self._trimmed("rewind", call)
        if outcome == -1:
            raise ValueError(f"group {group!r} does not subscribe {topic!r}: nothing to rewind")
        return await self._copy_history(topic, group) if outcome == _COPY else 0

    async def unsubscribe(self, topic: str, group: str) -> bool:
        """End ``group``'s subscription to ``topic``, dropping its copies; idempotent.

        The first script call removes the subscription; calls of bounded work then free
        the bodies no other group holds and delete every key of the group. The topic
        stays in the registry of topics, which lists it again only when a group
        subscribes.
        """
        topic, group = validate_topic(topic), validate_group(group)
        call = load_script("unsubscribe").call(
            [group, _TRIM_STEP], topic=self._keys.topic(topic), group=self._keys.group(topic, group)
        )
        removed = False
        while True:
            [(was, done)] = await self._run("unsubscribe", [call])
            removed = removed or _flag(was)
            if done:
                break
        self._due.pop((group, topic), None)
        return removed

    async def _register(self, topic: str) -> None:
        """Add ``topic`` to the registry behind topics(), which lives outside its slot.

        Before the group: a crash in between leaves a topic without groups, which
        topics() leaves out, rather than a subscription topics() does not list.
        """
        await self._guard("subscribe", self._client().sadd(self._keys.topics, topic))

    async def _count_history(self, topic: str, group: str, history: str) -> int:
        """What a rewind would deliver now, read in bounded steps; nothing changes."""
        t, g = self._keys.topic(topic), self._keys.group(topic, group)
        now = self._now_arg()
        cursor: Arg = ""
        count = 0
        while True:
            call = load_script("count_history").call(
                [group, history, cursor, _COPY_STEP, now], topic=t, group=g
            )
            [reply] = await self._run("rewind", [call])
            if reply == -1:
                raise ValueError(f"group {group!r} does not subscribe {topic!r}: nothing to rewind")
            cursor, part = reply
            count += int(part)
            if not cursor:
                return count

    async def groups(self, topic: str) -> list[str]:
        """The groups subscribed to ``topic``, sorted."""
        key = self._keys.topic(validate_topic(topic)).groups
        members = await self._guard("groups", self._client().smembers(key))
        return sorted(_text(m) for m in members)

    async def topics(self) -> list[str]:
        """Every topic with at least one subscribed group, sorted."""
        redis = self._client()
        names = sorted(
            _text(m) for m in await self._guard("topics", redis.smembers(self._keys.topics))
        )
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.scard(self._keys.topic(name).groups)
            counts = await self._guard("topics", pipe.execute())
        return [name for name, count in zip(names, counts, strict=True) if count]

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
        """Append events to every subscribed group's READY queue in one atomic script.

        Ids the topic still holds, or published within their dedup window, are skipped.
        Returns the number of copies enqueued. ``connection`` is refused (TypeError):
        Redis has no caller's transaction to write in.
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
        topic_keys = self._keys.topic(topic)  # validates the name (once: the keys are cached)
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
        groups = self._groups.get(topic, ())
        for _ in range(_PUBLISH_ROUNDS):
            call = load_script("publish").call(
                [
                    self._now_arg(),
                    repr(dedup_window),
                    len(groups),
                    *groups,
                    2 if keys is None else 3,
                    *args,
                ],
                topic=topic_keys,
                groups=[self._keys.group(topic, group) for group in groups],
            )
            [reply] = await self._run("publish", [call])
            if isinstance(reply, int):
                self._groups[topic] = groups
                return reply
            groups = tuple(sorted(_text(g) for g in reply))
        raise TransportError(f"publish to {topic!r} failed: its groups kept changing")

    # -- claim and wait ------------------------------------------------------------------

    def _claim_call(
        self,
        topic: str,
        group: str,
        count: int,
        lease: float,
        max_attempts: int,
        may_isolate: bool,
    ) -> Call:
        args: list[Arg] = [
            self._now_arg(),
            repr(lease),
            count,
            max_attempts,
            secrets.token_hex(12),
            "1" if may_isolate else "0",
            group,
        ]
        return load_script("claim").call(
            args, topic=self._keys.topic(topic), group=self._keys.group(topic, group)
        )

    def _messages(self, topic: str, group: str, reply: list[Any]) -> tuple[list[Message], bool]:
        """A claim script's messages, and whether it stopped before a suspect."""
        now, deadline, next_due, stopped, copying, *rows = reply
        self._note_due(group, topic, now, next_due)
        if copying and (topic, group) not in self._copies:
            # A history copy a crash cut short: the group gets live events only through
            # it, so a consumer of the group carries it on.
            task = asyncio.create_task(self._carry_on_copy(topic, group))
            self._copies[topic, group] = task
        lease_deadline = float(deadline)
        text = _text
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
        return messages, _flag(stopped)

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

        One claim script per topic, all in one round trip. ``max_count`` is shared out
        between the topics; topics that filled their share are asked again for what is
        left, so one busy topic can still fill the whole claim.

        Only the first script of a claim that has nothing yet may hand out a suspect
        (isolated) event; the others stop before one. If the first did while others took
        events, those are released again (uncounted), so the isolated event goes alone;
        if every topic stopped before a suspect, one more call takes one.
        """
        group = validate_group(group)
        names = list(dict.fromkeys(validate_topic(t) for t in topics))
        if lease <= 0:
            raise ValueError(f"lease must be positive, got {lease}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        messages: list[Message] = []
        blocked: list[str] = []  # topics whose script stopped before a suspect
        remaining, open_topics = max_count, names
        while remaining > 0 and open_topics:
            share, extra = divmod(remaining, len(open_topics))
            quotas = [share + (i < extra) for i in range(len(open_topics))]
            asked = [(t, q) for t, q in zip(open_topics, quotas, strict=True) if q > 0]
            calls = [
                self._claim_call(t, group, q, lease, max_attempts, not messages and n == 0)
                for n, (t, q) in enumerate(asked)
            ]
            replies = await self._run_partial("claim", calls)
            failed = [r for r in replies if isinstance(r, TransportError)]
            if failed and (len(failed) == len(replies) and not messages):
                raise failed[0]
            still_open = [t for t, q in zip(open_topics, quotas, strict=True) if q == 0]
            for (topic, quota), reply in zip(asked, replies, strict=True):
                if isinstance(reply, TransportError):
                    # Another topic's master answered: hand out what it leased, and
                    # try this topic again at the next claim.
                    log.warning("claim of %s/%s failed: %s", topic, group, reply)
                    continue
                got, stopped = self._messages(topic, group, reply)
                messages += got
                remaining -= len(got)
                if stopped:
                    blocked.append(topic)
                elif len(got) == quota:
                    still_open.append(topic)
            isolated = [m for m in messages if m.isolated]
            if isolated:
                return await self._alone(isolated[0], messages)
            open_topics = still_open
        if not messages and blocked:
            call = self._claim_call(blocked[0], group, 1, lease, max_attempts, True)
            [reply] = await self._run("claim", [call])
            messages, _ = self._messages(blocked[0], group, reply)
        return messages

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

    async def _poll(self, group: str, topics: Sequence[str]) -> int:
        """Run the poll script on ``topics``: how many events are READY for ``group``."""
        calls = []
        for topic in topics:
            g = self._keys.group(topic, group)
            calls.append(load_script("poll").call([self._now_arg()], group=g))
        ready = 0
        for topic, (count, now, next_due) in zip(
            topics, await self._run("wait", calls), strict=True
        ):
            self._note_due(group, topic, now, next_due)
            ready += count
        return int(ready)

    async def wait(self, group: str, topics: Sequence[str], timeout: float) -> bool:
        """Block on the group's marker lists until work may be there, or timeout.

        Publishes, nacks and replays set a marker, and claims delete it once READY is
        empty. On one topic the waiter moves the marker onto its own list (BLMOVE), which
        wakes it without taking the marker, so every idle consumer of the group wakes and
        returns at once: the claim that follows requeues due work and clears the marker
        (a wake-up for a delayed nack is spurious, and that claim learns the due time). On
        several topics one BLPOP takes a marker, and the poll script of its topic puts it
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
        markers = {self._keys.group(t, group).marker: t for t in names}
        if wakeups is not None:
            await wakeups.watch(markers)
            # A wake-up message is a hint, not the marker's state: work left READY
            # before this wait (by a waiter that woke and did not claim, say) sent none.
            if await self._poll(group, names):
                return True
        end = time.monotonic() + max(timeout, 0.0)
        while True:
            until_due = self._until_due(group, names)
            if until_due is not None and until_due <= 0:
                # Something fell due (a lease, perhaps one since extended, or a retry):
                # look, rather than wake the caller for nothing; the look also learns
                # what falls due next.
                if await self._poll(group, names):
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
            elif len(names) == 1:
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
            if sweep and await self._poll(group, names):
                return True

    # -- settling deliveries -------------------------------------------------------------

    def _by_queue(self, receipts: Sequence[Receipt]) -> dict[tuple[str, str], list[int]]:
        """Receipt positions grouped by (topic, group): one script call per queue."""
        queues: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(receipts):
            self._keys.group(r.topic, r.group)  # validates each distinct pair once (cached)
            queues.setdefault((r.topic, r.group), []).append(i)
        return queues

    async def _settle(
        self, op: str, receipts: Sequence[Receipt], script: Script, lease: float | None = None
    ) -> list[bool]:
        """Ack or extend ``receipts``: one script call per queue, all in one round trip."""
        queues = self._by_queue(receipts)
        calls = []
        for (topic, group), positions in queues.items():
            args: list[Arg] = [self._now_arg()]
            if lease is not None:
                args.append(repr(lease))
            for i in positions:
                args += (receipts[i].event_id, receipts[i].token)
            t, g = self._keys.topic(topic), self._keys.group(topic, group)
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
        topic, group = receipt.topic, receipt.group
        args: list[Arg] = [
            self._now_arg(),
            repr(delay),
            receipt.event_id,
            receipt.token,
        ]
        if error is not None:
            args.append(_stored_text(error))
        call = load_script("nack").call(args, group=self._keys.group(topic, group))
        [done] = await self._run("nack", [call])
        if _flag(done) and delay > 0:
            due = self._local_now() + delay
            self._due[(group, topic)] = min(self._due.get((group, topic), due), due)
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
        call = load_script("kill").call(
            args,
            topic=self._keys.topic(receipt.topic),
            group=self._keys.group(receipt.topic, receipt.group),
        )
        [done] = await self._run("kill", [call])
        return _flag(done)

    # -- dead letters and stats ----------------------------------------------------------

    async def dead_letters(
        self, topic: str, group: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead events of (topic, group), oldest death first, from ``offset``."""
        topic, group = validate_topic(topic), validate_group(group)
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        t, g = self._keys.topic(topic), self._keys.group(topic, group)
        call = load_script("dead_letters").call([limit, offset], topic=t, group=g)
        [rows] = await self._run("dead_letters", [call])
        letters = []
        for i in range(0, len(rows), 3):
            record = _dead_record(rows[i + 1])
            error = record.get("error")
            letters.append(
                DeadLetter(
                    topic=topic,
                    group=group,
                    event_id=_text(rows[i]),
                    body=rows[i + 2],
                    reason=_readable(str(record.get("reason", "unknown"))),
                    error=None if error is None else _readable(str(error)),
                    attempts=int(record.get("attempts", 0)),
                    died_at=float(record.get("died_at", 0.0)),
                )
            )
        return letters

    async def replay_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """Move dead events (all, or those listed) to the back of READY, attempts reset."""
        g = self._keys.group(validate_topic(topic), validate_group(group))
        call = load_script("replay_dead").call(
            [group, *_dead_args(event_ids)], topic=self._keys.topic(topic), group=g
        )
        return await self._for_dead("replay_dead", call, event_ids)

    async def purge_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead events (all, or those listed) for good; returns how many."""
        t, g = (
            self._keys.topic(validate_topic(topic)),
            self._keys.group(topic, validate_group(group)),
        )
        call = load_script("purge_dead").call(_dead_args(event_ids), topic=t, group=g)
        return await self._for_dead("purge_dead", call, event_ids)

    async def _for_dead(self, op: str, call: Call, event_ids: Sequence[str] | None) -> int:
        """Run replay_dead or purge_dead on every dead event, or on those listed."""
        if event_ids is not None and not event_ids:
            return 0
        [count] = await self._run(op, [call])
        return int(count)

    async def stats(self, topic: str, group: str) -> QueueStats:
        """Counts per state, after applying expired leases and due retries."""
        topic, group = validate_topic(topic), validate_group(group)
        call = load_script("stats").call([self._now_arg()], group=self._keys.group(topic, group))
        [reply] = await self._run("stats", [call])
        ready, leased, delayed, dead, now, next_due, acked = reply
        self._note_due(group, topic, now, next_due)
        return QueueStats(
            topic, group, int(ready), int(leased), int(delayed), int(dead), int(acked)
        )
