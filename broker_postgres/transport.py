"""``PostgresTransport``: the delivery state machine in PostgreSQL, one function per transition.

Any number of processes may share one database: every transition is one call of a
PL/pgSQL function (``sql/``), so one statement and one transaction; claims lock rows
``FOR UPDATE SKIP LOCKED``, so competing consumers never wait for each other; and lease
deadlines and due times come from the server's ``clock_timestamp()``, so client clocks
never matter. Tests may pass a :class:`~broker_core.Clock` instead; the functions then
take the time from the client, exactly as the Redis transport's scripts do.

The URL and the options are described and parsed in :mod:`broker_postgres.options`; the
schema and its migration in :mod:`broker_postgres.schema`; wake-ups in
:mod:`broker_postgres.wakeups`.

Transactional publish: ``publish(..., connection=conn)`` runs the publish function on
the caller's own asyncpg connection, inside whatever transaction it has open, so the
events exist only if that transaction commits (the outbox pattern without an outbox).

Retention and history (``sql/history.sql``): the retention is a row of the database, the
history is the topic's events rows with a position, every read filters by what the
retention covers, and publishes and claims trim a bounded batch each. A subscription
from history and a rewind copy it in one transaction (docs/postgres.md says why).

Failures
--------
Every PostgreSQL failure (unreachable, refused password, a schema this user may not
use, a timeout, a restart) raises :class:`~broker_core.TransportError` with what went
wrong and the URL without its password. A call is never re-sent automatically, because
a claim or an ack that reached the server must not run twice; the next call takes a
fresh connection from the pool. ``publish`` is idempotent, so a publisher may retry it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import asyncpg

from broker_core import (
    Clock,
    DeadLetter,
    EventTooLarge,
    Message,
    QueueStats,
    Receipt,
    SubscriptionMismatch,
    TopicStats,
    TransportError,
    partition_change_refused,
    redact,
    safe_text,
    validate_group,
    validate_history,
    validate_key,
    validate_partitions,
    validate_retention,
    validate_topic,
)
from broker_postgres.errors import BROKEN, FAILURES, transport_error
from broker_postgres.options import OPTION_NAMES, parse_options
from broker_postgres.schema import channel_of, migrate, quote
from broker_postgres.wakeups import Wakeups

__all__ = ["OPTION_NAMES", "PostgresTransport"]

_T = TypeVar("_T")


def _connection_types() -> tuple[type, ...]:
    from asyncpg.pool import PoolConnectionProxy

    return (asyncpg.Connection, PoolConnectionProxy)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset of a returned connection: nothing to undo, so no round trip.

    Every call is one autocommitted statement that leaves no session state behind (its
    locks are transaction-scoped, nothing LISTENs on a pooled connection), while
    asyncpg's default reset would cost one more round trip per call.
    """


class PostgresTransport:
    """The :class:`~broker_core.Transport` over PostgreSQL; see the module docstring.

    ``url`` and the keyword options are described in :mod:`broker_postgres.options`.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        max_connections: int | None = None,
        connect_timeout: float | None = None,
        command_timeout: float | None = None,
        max_body_bytes: int | None = None,
        poll_interval: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        options = parse_options(
            url,
            {
                "schema": schema,
                "max_connections": max_connections,
                "connect_timeout": connect_timeout,
                "command_timeout": command_timeout,
                "max_body_bytes": max_body_bytes,
                "poll_interval": poll_interval,
            },
        )
        self._options = options
        self._schema = options.schema
        self._s = quote(options.schema)
        self._safe_url = redact(url)
        self._user = urlsplit(options.dsn).username
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._connecting = asyncio.Lock()
        self._wakeups = Wakeups(self._listen_connection)

    @property
    def max_body_bytes(self) -> int:
        """The largest body ``publish`` stores (option ``max_body_bytes``)."""
        return self._options.max_body_bytes

    @property
    def schema(self) -> str:
        """The schema holding this transport's tables."""
        return self._schema

    def __repr__(self) -> str:
        return f"PostgresTransport({self._safe_url!r}, schema={self._schema!r})"

    # -- connections and errors ----------------------------------------------------------

    def _connect_args(self) -> dict[str, Any]:
        return {
            "dsn": self._options.dsn,
            "timeout": self._options.connect_timeout,
            "command_timeout": self._options.command_timeout,
        }

    async def _listen_connection(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(**self._connect_args())
        return conn

    async def connect(self) -> None:
        """Open the pool, create or migrate the schema, and check the server answers.

        Idempotent, also when called concurrently; after a failure it may be called again.
        Raises TransportError for a wrong password, an unreachable server or a schema
        this user may not use.
        """
        async with self._connecting:
            if self._pool is not None:
                return
            try:
                pool = await asyncpg.create_pool(
                    min_size=0,
                    max_size=self._options.max_connections,
                    reset=_keep_session,
                    **self._connect_args(),
                )
            except FAILURES as exc:
                raise self._error("connect", exc) from exc
            try:
                async with pool.acquire() as conn:
                    await migrate(conn, self._schema)
            except TransportError:
                await pool.close()
                raise
            except FAILURES as exc:
                await pool.close()
                raise self._error("connect", exc) from exc
            self._pool = pool

    async def close(self) -> None:
        """Close the pool and the listening connection; what is stored stays."""
        pool, self._pool = self._pool, None
        await self._wakeups.close()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._options.connect_timeout)
            except FAILURES:
                pool.terminate()

    def _error(self, op: str, exc: BaseException) -> TransportError:
        return transport_error(op, exc, self._safe_url, self._user)

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise TransportError("PostgresTransport is not connected: call connect() first")
        return self._pool

    async def _guard(self, op: str, awaitable: Awaitable[_T]) -> _T:
        try:
            return await awaitable
        except FAILURES as exc:
            if isinstance(exc, BROKEN) and self._pool is not None:
                # The server went away (a restart, a failover): no pooled connection is
                # trusted again, each is replaced when next acquired.
                await self._pool.expire_connections()
            raise self._error(op, exc) from exc

    async def _fetch(self, op: str, sql: str, *args: object) -> list[asyncpg.Record]:
        pool = self._require_pool()
        rows: list[asyncpg.Record] = await self._guard(op, pool.fetch(sql, *args))
        return rows

    async def _fetchval(self, op: str, sql: str, *args: object) -> Any:
        pool = self._require_pool()
        return await self._guard(op, pool.fetchval(sql, *args))

    def _now(self) -> float | None:
        """The time the functions use: None (the server's clock) or the injected clock's."""
        return None if self._clock is None else self._clock.now()

    # -- subscriptions -------------------------------------------------------------------

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
        raise SubscriptionMismatch. A new subscription with ``history`` first receives the
        retained events at most ``history`` s old, copied in the same transaction that
        creates it (one INSERT ... SELECT): no copy is ever left half done.
        """
        topic, group = validate_topic(topic), validate_group(group)
        validate_history(history)
        [row] = await self._fetch(
            "subscribe",
            f"SELECT * FROM {self._s}.subscribe($1, $2, $3, $4, $5)",
            topic,
            group,
            ordered,
            None if history is None else float(history),
            self._now(),
        )
        if row["o_mismatch"]:
            stored = row["o_ordered"]
            raise SubscriptionMismatch(
                f"group {group!r} subscribed to {topic!r} with ordered={stored}: subscribe "
                f"again without options or with ordered={stored} (a subscription keeps the "
                "options it was created with)"
            )

    async def unsubscribe(self, topic: str, group: str) -> bool:
        """End ``group``'s subscription to ``topic`` and drop its every copy, dead ones too.

        Bodies no other group nor the history holds are deleted with them. Idempotent:
        returns whether the group was subscribed.
        """
        topic, group = validate_topic(topic), validate_group(group)
        done = await self._fetchval(
            "unsubscribe", f"SELECT {self._s}.unsubscribe($1, $2)", topic, group
        )
        return bool(done)

    # -- retention and history -----------------------------------------------------------

    async def configure_topic(
        self,
        topic: str,
        *,
        max_age: float | None = None,
        max_events: int | None = None,
        partitions: int | None = None,
    ) -> None:
        """Store ``topic``'s retention and partition count in the database, shared by
        every process.

        Both None removes retention and the history. Trimming is bounded work done by
        this call, publishes and claims; what they have yet to trim is never read. The
        partition count is only stored (one queue per group keeps every partition's
        order); a change while the topic holds events raises PartitionChangeRefused.
        """
        topic = validate_topic(topic)
        validate_retention(max_age, max_events)
        if partitions is not None:
            validate_partitions(partitions)
        holding = await self._fetchval(
            "configure_topic",
            f"SELECT {self._s}.configure_topic($1, $2, $3, $4, $5)",
            topic,
            None if max_age is None else float(max_age),
            max_events,
            partitions,
            self._now(),
        )
        if holding is not None:
            stats = await self.topic_stats(topic)
            raise partition_change_refused(topic, stats.partitions, cast(int, partitions), holding)

    async def topic_stats(self, topic: str) -> TopicStats:
        """``topic``'s retention, how many events it retains and how old the oldest is."""
        topic = validate_topic(topic)
        rows = await self._fetch(
            "topic_stats", f"SELECT * FROM {self._s}.topic_stats($1, $2)", topic, self._now()
        )
        if not rows:
            return TopicStats(topic, None, None, 0, None)
        [row] = rows
        oldest = row["o_oldest_at"]
        return TopicStats(
            topic,
            row["o_max_age"],
            row["o_max_events"],
            int(row["o_retained"]),
            None if oldest is None else max(row["o_now"] - oldest, 0.0),
            partitions=int(row["o_partitions"]),
        )

    async def rewind(self, topic: str, group: str, *, history: float, dry_run: bool = False) -> int:
        """Deliver the retained events at most ``history`` s old that ``group`` does not
        hold again, at the back of its queue in publish order; returns how many.

        One transaction. ``dry_run`` only counts. Raises ValueError if ``group`` does not
        subscribe ``topic``.
        """
        topic, group = validate_topic(topic), validate_group(group)
        validate_history(history, optional=False)
        count = int(
            await self._fetchval(
                "rewind",
                f"SELECT {self._s}.rewind($1, $2, $3, $4, $5)",
                topic,
                group,
                float(history),
                bool(dry_run),
                self._now(),
            )
        )
        if count < 0:
            raise ValueError(f"group {group!r} does not subscribe {topic!r}: nothing to rewind")
        return count

    async def groups(self, topic: str) -> list[str]:
        """The groups subscribed to ``topic``, sorted."""
        rows = await self._fetch(
            "groups",
            f'SELECT grp FROM {self._s}.subscriptions WHERE topic = $1 ORDER BY grp COLLATE "C"',
            validate_topic(topic),
        )
        return [r["grp"] for r in rows]

    async def topics(self) -> list[str]:
        """Every topic with at least one subscribed group, sorted."""
        rows = await self._fetch(
            "topics",
            f'SELECT DISTINCT topic COLLATE "C" AS topic FROM {self._s}.subscriptions ORDER BY 1',
        )
        return [r["topic"] for r in rows]

    # -- publish -------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        events: Sequence[tuple[str, bytes]],
        *,
        keys: Sequence[str | None] | None = None,
        dedup_window: float = 0.0,
        connection: object | None = None,
    ) -> int:
        """Append events to every subscribed group's READY queue in one function call.

        Ids the topic still holds, or published within their dedup window, are skipped.
        Returns the number of copies enqueued. With ``connection`` (an open asyncpg
        connection, perhaps inside a transaction), the events are written on it, in the
        caller's transaction: they exist only once it commits.
        """
        topic = validate_topic(topic)
        if dedup_window < 0:
            raise ValueError(f"dedup_window must not be negative, got {dedup_window}")
        if keys is not None:
            if len(keys) != len(events):
                raise ValueError(f"{len(keys)} keys for {len(events)} events")
            for key in keys:
                if key is not None:
                    validate_key(key)
        if connection is not None and not isinstance(connection, _connection_types()):
            raise TypeError(
                "PostgresTransport.publish(connection=...) takes an asyncpg connection, "
                f"got {type(connection).__name__}"
            )
        limit = self._options.max_body_bytes
        ids, bodies = [], []
        for event_id, body in events:
            if len(body) > limit:
                raise EventTooLarge(
                    f"event {event_id!r} is {len(body)} bytes; this PostgreSQL transport "
                    f"accepts at most {limit} (option max_body_bytes)"
                )
            ids.append(event_id)
            bodies.append(bytes(body))
        if not ids:
            return 0
        sql = f"SELECT {self._s}.publish($1, $2, $3, $4, $5, $6)"
        args = (topic, ids, bodies, None if keys is None else list(keys), dedup_window, self._now())
        if connection is None:
            return int(await self._fetchval("publish", sql, *args))
        return int(await self._guard("publish", connection.fetchval(sql, *args)))  # type: ignore[attr-defined]

    # -- claim and wait ------------------------------------------------------------------

    async def claim(
        self,
        group: str,
        topics: Sequence[str],
        *,
        max_count: int,
        lease: float,
        max_attempts: int,
    ) -> list[Message]:
        """Lease up to ``max_count`` READY events of ``group`` from ``topics``, in order.

        One function call, one transaction, whatever the number of topics.
        """
        group = validate_group(group)
        names = list(dict.fromkeys(validate_topic(t) for t in topics))
        if lease <= 0:
            raise ValueError(f"lease must be positive, got {lease}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if max_count <= 0 or not names:
            return []
        rows = await self._fetch(
            "claim",
            f"SELECT * FROM {self._s}.claim($1, $2, $3, $4, $5, $6, $7)",
            group,
            names,
            max_count,
            lease,
            max_attempts,
            secrets.token_hex(8),
            self._now(),
        )
        return [
            Message(
                receipt=Receipt(r["o_topic"], group, r["o_id"], r["o_token"]),
                body=r["o_body"],
                attempt=r["o_attempt"],
                lease_deadline=r["o_deadline"],
                key=r["o_key"],
                isolated=r["o_isolated"],
            )
            for r in rows
        ]

    async def wait(self, group: str, topics: Sequence[str], timeout: float) -> bool:
        """Block until a notification on one of ``topics`` or a due deadline, or timeout.

        Each round polls the tables (read-only) first: work there returns True at once.
        Otherwise the waiter parks on the topics' NOTIFY channels, for at most the poll
        interval and never past the earliest lease deadline or due retry of the group's
        topics, then polls again. A notification returns True (it may be spurious).
        """
        group = validate_group(group)
        names = list(dict.fromkeys(validate_topic(t) for t in topics))
        self._require_pool()
        loop = asyncio.get_running_loop()
        if not names:
            await asyncio.sleep(max(timeout, 0.0))
            return False
        channels = [channel_of(self._schema, t) for t in names]
        end = loop.time() + max(timeout, 0.0)
        while True:
            await self._wakeups.listen(channels)
            # Parked before the poll, so that a notification sent after it is not missed.
            with self._wakeups.waiter(channels) as woken:
                [row] = await self._fetch(
                    "wait", f"SELECT * FROM {self._s}.poll($1, $2, $3)", group, names, self._now()
                )
                if row["o_work"]:
                    return True
                remaining = end - loop.time()
                if remaining <= 0:
                    return False
                sleep = min(remaining, self._options.poll_interval)
                if row["o_next_due"] is not None:
                    sleep = min(sleep, max(row["o_next_due"], 0.001))
                try:
                    if await asyncio.wait_for(asyncio.shield(woken), sleep):
                        return True
                except TimeoutError:
                    pass

    # -- settling deliveries -------------------------------------------------------------

    async def _settle(self, op: str, receipts: Sequence[Receipt], *extra: object) -> list[bool]:
        """Ack, extend or release: one function call per (topic, group)."""
        queues: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(receipts):
            queues.setdefault((validate_topic(r.topic), validate_group(r.group)), []).append(i)
        answers = [False] * len(receipts)
        # $1 topic, $2 group, $3 ids, $4 tokens, then the extra arguments, then now.
        params = ", ".join(f"${n}" for n in range(1, 6 + len(extra)))
        call = f"SELECT * FROM {self._s}.{op}({params})"
        for (topic, group), positions in queues.items():
            ids = [receipts[i].event_id for i in positions]
            tokens = [receipts[i].token for i in positions]
            args = [topic, group, ids, tokens, *extra, self._now()]
            live = {(r["o_id"], r["o_token"]) for r in await self._fetch(op, call, *args)}
            for i in positions:
                pair = (receipts[i].event_id, receipts[i].token)
                if pair in live:
                    answers[i] = True
                    live.discard(pair)  # a receipt given twice counts once
        return answers

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        """Mark leased events DONE; False for each stale receipt."""
        return await self._settle("ack", receipts)

    async def extend(self, receipts: Sequence[Receipt], lease: float) -> list[bool]:
        """Make each live lease last at least ``lease`` s from now; False where stale."""
        if lease <= 0:
            raise ValueError(f"lease must be positive, got {lease}")
        return await self._settle("extend", receipts, float(lease))

    async def release(self, receipts: Sequence[Receipt]) -> list[bool]:
        """Give leased events back to the front of READY, attempts uncounted."""
        return await self._settle("release", receipts)

    async def nack(self, receipt: Receipt, *, delay: float = 0.0, error: str | None = None) -> bool:
        """Give a leased event back: to the front of READY, or DELAYED for ``delay`` s."""
        if delay < 0:
            raise ValueError(f"delay must not be negative, got {delay}")
        done = await self._fetchval(
            "nack",
            f"SELECT {self._s}.nack($1, $2, $3, $4, $5, $6, $7)",
            validate_topic(receipt.topic),
            validate_group(receipt.group),
            receipt.event_id,
            receipt.token,
            float(delay),
            None if error is None else safe_text(error),
            self._now(),
        )
        return bool(done)

    async def kill(self, receipt: Receipt, *, reason: str, error: str | None = None) -> bool:
        """Move a leased event to DEAD with ``reason``; False (no change) if stale."""
        done = await self._fetchval(
            "kill",
            f"SELECT {self._s}.kill($1, $2, $3, $4, $5, $6, $7)",
            validate_topic(receipt.topic),
            validate_group(receipt.group),
            receipt.event_id,
            receipt.token,
            safe_text(reason),
            None if error is None else safe_text(error),
            self._now(),
        )
        return bool(done)

    # -- dead letters and stats ----------------------------------------------------------

    async def dead_letters(
        self, topic: str, group: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead events of (topic, group), oldest death first, the ``offset``
        oldest skipped."""
        topic, group = validate_topic(topic), validate_group(group)
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        rows = await self._fetch(
            "dead_letters",
            f"SELECT * FROM {self._s}.dead_letters($1, $2, $3, $4)",
            topic,
            group,
            max(int(limit), 0),
            int(offset),
        )
        return [
            DeadLetter(
                topic=topic,
                group=group,
                event_id=r["o_id"],
                body=r["o_body"],
                reason=r["o_reason"] or "unknown",
                error=r["o_error"],
                attempts=r["o_attempts"],
                died_at=r["o_died_at"] or 0.0,
            )
            for r in rows
        ]

    async def replay_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """Move dead events (all, or those listed) to the back of READY, attempts reset."""
        return await self._for_dead("replay_dead", topic, group, event_ids)

    async def purge_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead events (all, or those listed) for good; returns how many."""
        return await self._for_dead("purge_dead", topic, group, event_ids)

    async def _for_dead(
        self, op: str, topic: str, group: str, event_ids: Sequence[str] | None
    ) -> int:
        topic, group = validate_topic(topic), validate_group(group)
        if event_ids is not None and not event_ids:
            return 0
        ids = None if event_ids is None else list(event_ids)
        count = await self._fetchval(op, f"SELECT {self._s}.{op}($1, $2, $3)", topic, group, ids)
        return int(count)

    async def stats(self, topic: str, group: str) -> QueueStats:
        """Counts per state at the current time (expired leases and due retries as READY)."""
        topic, group = validate_topic(topic), validate_group(group)
        [row] = await self._fetch(
            "stats", f"SELECT * FROM {self._s}.stats($1, $2, $3)", topic, group, self._now()
        )
        return QueueStats(
            topic,
            group,
            int(row["o_ready"]),
            int(row["o_leased"]),
            int(row["o_delayed"]),
            int(row["o_dead"]),
        )
