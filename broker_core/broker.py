"""The Broker facade: what a service calls to publish, subscribe and consume."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from broker_core.codec import encode
from broker_core.consumer import Consumer
from broker_core.errors import EventTooLarge
from broker_core.events import Event
from broker_core.handlers import Handler, Route, Router
from broker_core.lifecycle import Lifecycle
from broker_core.names import validate_group, validate_key, validate_topic
from broker_core.partitions import validate_partitions
from broker_core.plugins import broker_plugin_manager, make_transport
from broker_core.retry import RetryPolicy
from broker_core.settings import BrokerOptions, BrokerSettings
from broker_core.transport import DeadLetter, QueueStats, TopicStats, Transport

__all__ = ["Broker", "Start", "parse_start"]

Start = Literal["latest", "earliest"] | datetime
"""Where a subscription or a rewind starts: ``"latest"`` (only events published from now
on), ``"earliest"`` (everything the topic retains) or the first retained event published
at or after an aware ``datetime``."""

H = TypeVar("H", bound=Handler)

_PROTOCOL = sorted(name for name in vars(Transport) if not name.startswith("_"))
"""The members every transport must have."""


class Broker:
    """An event broker inside one service instance.

    Publish events to topics; as a member of a ``group`` (the subscribing service),
    subscribe to topics and handle their events, competing with the group's other
    instances. Use it as an async context manager, which connects and closes the
    transport::

        broker = Broker.from_url("memory://", group="billing")
        async with broker:
            await broker.subscribe("orders")

            @broker.on(OrderPlaced)
            async def handle(event: OrderPlaced, delivery: Delivery) -> None: ...

            await broker.publish(OrderPlaced(order_id="1", total=9.5))
            await broker.run()

    ``plugins`` are modules or objects with ``@hookimpl`` functions (for example the
    lifecycle hooks of :mod:`broker_core.hooks`) that apply to this broker alone, on top
    of the entry-point plugins every broker has. The hooks' implementations are looked
    up here, once: a hook nobody implements costs nothing later.
    """

    def __init__(
        self,
        transport: Transport,
        options: BrokerOptions | None = None,
        *,
        plugins: Iterable[object] = (),
    ) -> None:
        self.options = options or BrokerOptions()
        if self.options.group is not None:
            validate_group(self.options.group)
        # A transport written against an older protocol fails here, by name, rather than
        # deep inside the first publish or stop that needs what it lacks.
        missing = [name for name in _PROTOCOL if not hasattr(transport, name)]
        if missing:
            raise TypeError(
                f"{type(transport).__name__} does not implement the Transport protocol: "
                f"it lacks {', '.join(missing)} (see docs/plugins.md)"
            )
        self.transport = transport
        self._hooks = Lifecycle(broker_plugin_manager(plugins))
        self._retry = self.options.retry_policy()
        self._router = Router()
        self._subscribed: set[str] = set()
        self._consumer: Consumer | None = None
        self._starting = False
        self._stop_pending = False

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str = "memory://",
        *,
        transport_options: Mapping[str, Any] | None = None,
        plugins: Sequence[object] = (),
        **options: Any,
    ) -> Broker:
        """A broker on the transport that serves ``url``'s scheme.

        :param options: any :class:`~broker_core.settings.BrokerOptions` field
            (``group``, ``lease``, ``concurrency``, ``max_attempts``, ``retry``, ...).
        :param transport_options: passed to the transport plugin (e.g. ``clock``).
        :param plugins: plugins of this broker alone (see :class:`Broker`); they may
            also provide the transport.
        """
        return cls._build(BrokerOptions(url=url, **options), transport_options, plugins)

    @classmethod
    def from_settings(
        cls,
        settings: BrokerSettings | None = None,
        *,
        transport_options: Mapping[str, Any] | None = None,
        plugins: Sequence[object] = (),
    ) -> Broker:
        """A broker configured from ``BROKER_*`` environment variables (or ``settings``).

        ``plugins`` as for :meth:`from_url`.
        """
        return cls._build(settings or BrokerSettings(), transport_options, plugins)

    @classmethod
    def _build(
        cls,
        options: BrokerOptions,
        transport_options: Mapping[str, Any] | None,
        plugins: Sequence[object],
    ) -> Broker:
        pm = broker_plugin_manager(plugins)
        return cls(make_transport(options.url, transport_options, pm), options, plugins=plugins)

    @property
    def group(self) -> str | None:
        """The group this broker consumes for, if any."""
        return self.options.group

    def _require_group(self, group: str | None = None) -> str:
        # ``is None``, not ``or``: an empty name must reach validation and be refused.
        group = self.options.group if group is None else group
        if group is None:
            raise ValueError("this needs a group: Broker.from_url(url, group='my-service')")
        return validate_group(group)

    # -- lifecycle -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect the transport (``async with broker`` does it for you)."""
        await self.transport.connect()

    async def close(self) -> None:
        """Stop a running :meth:`run` gracefully, wait for it to finish, close the transport."""
        if self._consumer is not None and self._consumer.running:
            if self._consumer.runs_handler(asyncio.current_task()):
                raise RuntimeError(
                    "close() was called from inside a handler, and would wait for that "
                    "handler to finish: call broker.stop() there instead"
                )
            self._consumer.stop()
            await self._consumer.wait_stopped()
        await self.transport.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- publishing ----------------------------------------------------------------------

    async def publish(
        self,
        event: Event,
        *,
        topic: str | None = None,
        key: str | None = None,
        connection: object | None = None,
    ) -> int:
        """Publish ``event`` to ``topic`` (default: its class's ``topic``).

        ``key`` is its ordering key (default: the value of its class's ``key_field``, if
        any): an ordered group handles the events of one key one at a time, in publish
        order. It travels in the envelope and reaches handlers as ``delivery.key``.

        Returns how many groups it reached; 0 when nobody subscribed (not an error), and
        0 for a duplicate: an event whose id the topic still holds, or was published to
        the topic less than ``dedup_window`` seconds ago (an outbox relay re-sending it,
        a retry after a timeout). Before anything is stored, raises InvalidEvent, naming
        the field, if it holds a value the wire format cannot carry (docs/wire-format.md),
        and EventTooLarge if it exceeds ``max_event_bytes`` or the transport's own
        ``max_body_bytes``.

        ``connection`` (transactional publish): a connection of the caller's to the
        transport's own database, with its transaction open, e.g. an asyncpg connection
        for ``postgresql://``. The event is written in that transaction and exists only
        if it commits. Transports without a database (memory, Redis) raise TypeError.
        """
        name = self._topic_of(event, topic)
        key = self._key_of(event, key)
        if self._hooks.publish_headers is not None:
            event = self._hooks.publish_headers(name, event, key)
        body = self._encode(event, name, key, self._size_limit())
        keys = None if key is None else [key]
        if self._hooks.observes_publish:
            return await self._publish_observed(name, [event], [(event.id, body)], keys, connection)
        return await self._send(name, [(event.id, body)], keys, connection)

    async def publish_many(
        self,
        events: Iterable[Event],
        *,
        topic: str | None = None,
        connection: object | None = None,
    ) -> int:
        """Publish several events, one transport call per topic, all topics at once.

        Events of one topic keep their order; each has its own class's ordering key.
        Returns the number of (event, group)
        copies enqueued; duplicates (see :meth:`publish`) are skipped one by one while
        the rest go through. Every event is checked, as by :meth:`publish`, before anything
        is sent: if one is refused, nothing is published.

        Each topic's batch is stored atomically (one transport call), but the topics are
        published concurrently: if the store fails midway (TransportError), some topics
        may hold their events and others not. Retrying the whole call within the dedup
        window is safe then: the topics skip the ids already published.

        With ``connection`` (see :meth:`publish`) every topic's batch is written on it,
        one after the other, all in the caller's transaction: all or nothing.
        """
        limit = self._size_limit()
        observed, add_headers = self._hooks.observes_publish, self._hooks.publish_headers
        batches: dict[str, tuple[list[tuple[str, bytes]], list[str | None]]] = {}
        grouped: dict[str, list[Event]] = {}  # only the publish hooks need the events
        for event in events:
            name = self._topic_of(event, topic)
            key = self._key_of(event, None)
            if add_headers is not None:
                event = add_headers(name, event, key)
            batch, keys = batches.setdefault(name, ([], []))
            batch.append((event.id, self._encode(event, name, key, limit)))
            keys.append(key)
            if observed:
                grouped.setdefault(name, []).append(event)
        sends = []
        for name, (batch, keys) in batches.items():
            # Unkeyed events, the usual case, send no keys at all.
            sent_keys = keys if any(k is not None for k in keys) else None
            if observed:
                sends.append(
                    self._publish_observed(name, grouped[name], batch, sent_keys, connection)
                )
            else:
                sends.append(self._send(name, batch, sent_keys, connection))
        if connection is not None:
            # One connection runs one statement at a time: the topics go in turn.
            total = 0
            for n, send in enumerate(sends):
                try:
                    total += await send
                except BaseException:
                    for unsent in sends[n + 1 :]:
                        unsent.close()
                    raise
            return total
        if len(sends) == 1:
            # The usual case: one topic, one call, no task to run it in.
            return await sends[0]
        return sum(await asyncio.gather(*sends))

    async def _publish_observed(
        self,
        topic: str,
        events: Sequence[Event],
        batch: list[tuple[str, bytes]],
        keys: Sequence[str | None] | None,
        connection: object | None,
    ) -> int:
        """One transport call of a publish, between the publish hooks."""
        before, after = self._hooks.publish_before, self._hooks.publish_after
        if before is not None:
            await before(topic, events)
        try:
            copies = await self._send(topic, batch, keys, connection)
        except Exception as exc:
            if after is not None:
                await after(topic, events, None, exc)
            raise
        if after is not None:
            await after(topic, events, copies, None)
        return copies

    def _send(
        self,
        topic: str,
        batch: list[tuple[str, bytes]],
        keys: Sequence[str | None] | None,
        connection: object | None,
    ) -> Coroutine[Any, Any, int]:
        """The transport call of one topic's batch; ``connection`` only when given, so
        that a transport written before transactional publish keeps working."""
        window = self.options.dedup_window
        if connection is None:
            return self.transport.publish(topic, batch, keys=keys, dedup_window=window)
        return self.transport.publish(
            topic, batch, keys=keys, dedup_window=window, connection=connection
        )

    @staticmethod
    def _topic_of(event: Event, topic: str | None) -> str:
        if not isinstance(event, Event):
            raise TypeError(f"publish takes Event instances, got {type(event).__name__}")
        name = event.topic if topic is None else topic
        if name is None:
            raise ValueError(
                f"{type(event).__name__} has no topic: set `topic: ClassVar[str]` on the class "
                "or pass publish(event, topic=...)"
            )
        return validate_topic(name)

    @staticmethod
    def _key_of(event: Event, key: str | None) -> str | None:
        key = event.ordering_key() if key is None else key
        return None if key is None else validate_key(key)

    def _size_limit(self) -> tuple[int, str]:
        """The largest encoded event publish may send, and the option that sets it."""
        own = self.options.max_event_bytes
        # The transport's limit counts too: its refusal would come after other topics of a
        # publish_many were already stored.
        store = self.transport.max_body_bytes
        if store is not None and store < own:
            return store, f"the transport's max_body_bytes={store}"
        return own, f"max_event_bytes={own}"

    @staticmethod
    def _encode(event: Event, topic: str, key: str | None, limit: tuple[int, str]) -> bytes:
        body = encode(event, topic, key)
        most, option = limit
        if len(body) > most:
            raise EventTooLarge(
                f"event {event.id} ({event.type_name}) is {len(body)} bytes encoded; "
                f"the limit is {option}"
            )
        return body

    # -- subscribing and handling --------------------------------------------------------

    async def subscribe(
        self, *topics: str, ordered: bool | None = None, start: Start = "latest"
    ) -> None:
        """Subscribe this broker's group to ``topics`` (durably: it outlives the process).

        With ``ordered=True`` the group handles the events of one ordering key one at a
        time, in publish order, while different keys proceed in parallel (see
        docs/semantics.md). A subscription keeps the options it was created with:
        without ``ordered`` (as :meth:`run` subscribes) they are kept, and a different
        ``ordered`` raises SubscriptionMismatch.

        ``start`` applies to a new subscription: ``"earliest"`` or a datetime first
        delivers the history the topic retains (see :meth:`configure_topic`) from there
        on, oldest first, then the events published later. An existing subscription
        keeps its place, so a service may pass ``start`` on every start.
        """
        group = self._require_group()
        history = _history(start)
        for topic in topics:
            await self.transport.subscribe(
                validate_topic(topic), group, ordered=ordered, history=history
            )
            self._subscribed.add(topic)

    async def unsubscribe(self, topic: str, *, group: str | None = None) -> bool:
        """End the subscription of this broker's group (or ``group``) to ``topic``.

        For a service that is decommissioned, or no longer consumes ``topic``: every
        event the group still holds there, dead letters included, is dropped, and events
        published afterwards no longer reach it. Other groups are untouched. A consumer
        still running for the group would subscribe it again. Returns whether it was
        subscribed.
        """
        name, group = validate_topic(topic), self._require_group(group)
        removed = await self.transport.unsubscribe(name, group)
        if group == self.options.group:
            self._subscribed.discard(name)
        return removed

    def on(
        self,
        target: type[Event] | str,
        *,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> Callable[[H], H]:
        """Register the decorated function as the handler of an event class or a topic.

        ``broker.on(OrderPlaced)`` handles OrderPlaced events on ``OrderPlaced.topic``;
        ``broker.on("orders")`` handles every event on ``orders`` that has no handler
        of its own type, unknown types included (as :class:`UnknownEvent`). The
        handler takes ``(event)`` or ``(event, delivery)``; it may be a coroutine
        function or a plain function (run in a worker thread). Returning acks the
        event; raising retries it by ``retry`` (default: the broker's), at most
        ``max_attempts`` deliveries in all, then dead-letters it.
        """
        if isinstance(target, str):
            topic, event_type = validate_topic(target), None
        elif isinstance(target, type) and issubclass(target, Event):
            if target.topic is None:
                raise ValueError(f"{target.__name__} has no topic; use broker.on('topic') instead")
            topic, event_type = validate_topic(target.topic), target
        else:
            raise TypeError(f"on() takes an Event subclass or a topic name, got {target!r}")
        policy = retry or self._retry
        if max_attempts is not None:
            policy = policy.model_copy(update={"max_attempts": max_attempts})

        def register(func: H) -> H:
            self._router.add(Route.build(topic, event_type, func, policy))
            return func

        return register

    async def _consumer_topics(self) -> tuple[Consumer, list[str]]:
        group = self._require_group()
        topics = self._router.topics()
        if not topics:
            raise RuntimeError("no handlers registered: decorate one with @broker.on(...) first")
        # Consuming a topic implies a durable subscription to it.
        await self.subscribe(*(t for t in topics if t not in self._subscribed))
        if self._consumer is None:
            self._consumer = Consumer(
                self.transport, group, self._router, self.options, self._hooks
            )
        return self._consumer, topics

    async def pick(self) -> bool:
        """Claim at most one event, run its handler and settle it; False if none was ready."""
        consumer, topics = await self._consumer_topics()
        return await consumer.pick(topics)

    async def run(self) -> None:
        """Consume events until :meth:`stop`, :meth:`abort` or cancellation.

        On stop, no new events are claimed and running handlers get
        ``shutdown_grace`` seconds to finish; those still running are cancelled and
        their events given back at once for other consumers. A cancellation gives them no
        grace; the acks and give-backs it finds under way are finished however often it
        is cancelled, and the cancellation is raised then.
        """
        # From here on a stop() is kept even before the consumer runs (SIGTERM while the
        # service is still subscribing).
        self._starting = True
        self._stop_pending = False
        try:
            consumer, topics = await self._consumer_topics()
        finally:
            self._starting = False
        if self._stop_pending:
            return
        await consumer.run(topics)

    def stop(self) -> None:
        """Ask a :meth:`run` in progress, even one still starting, to finish gracefully.

        Returns at once. With no run in progress it does nothing.
        """
        if self._consumer is not None and self._consumer.running:
            self._consumer.stop()
        elif self._starting:
            self._stop_pending = True

    def abort(self) -> None:
        """End :meth:`run` as if the process had crashed, settling nothing.

        The events it held return to other consumers when their leases expire; meant
        for tests and demonstrations of crash recovery.
        """
        if self._consumer is not None and self._consumer.running:
            self._consumer.abort()

    # -- operating -----------------------------------------------------------------------

    async def stats(self, topic: str | None = None) -> list[QueueStats]:
        """Per topic and group: ready, leased, delayed and dead counts.

        All topics with subscribers, or just ``topic``.
        """
        topics = [validate_topic(topic)] if topic is not None else await self.transport.topics()
        result = []
        for name in topics:
            for group in await self.transport.groups(name):
                result.append(await self.transport.stats(name, group))
        return result

    async def configure_topic(
        self,
        topic: str,
        *,
        max_age: timedelta | float | None = None,
        max_events: int | None = None,
        partitions: int | None = None,
    ) -> None:
        """Keep ``topic``'s events as history: for ``max_age`` (a timedelta or seconds), the
        newest ``max_events``, or both (whichever drops an event first); and spread it
        over ``partitions`` partitions.

        The configuration is stored in the transport and shared by every process. Without
        ``max_age`` or ``max_events`` (the default of every topic) a topic keeps no
        history, and such a call removes the topic's retention, unless it gives
        ``partitions``: ``configure_topic(t, partitions=12)`` changes only the count. With
        retention, new groups may subscribe with ``start="earliest"`` and groups may
        :meth:`rewind`. ``partitions`` (None keeps the topic's count, 1 by default) lets
        a hot topic spread over every master of a Redis Cluster; order then holds per
        partition, so per ordering key (docs/semantics.md, "Partitioned topics").
        Changing the count of a topic that holds events raises
        :class:`~broker_core.errors.PartitionChangeRefused` and changes nothing; a
        transport that has no partitions raises TypeError saying so.
        """
        age = max_age.total_seconds() if isinstance(max_age, timedelta) else max_age
        # Passed only when given, so that a transport written before partitions existed
        # keeps working for retention.
        options: dict[str, int] = {}
        if partitions is not None:
            options["partitions"] = validate_partitions(partitions)
            self._check_partitions_supported()
        await self.transport.configure_topic(
            validate_topic(topic), max_age=age, max_events=max_events, **options
        )

    def _check_partitions_supported(self) -> None:
        """Refuse ``partitions`` clearly for a transport written before they existed."""
        try:
            parameters = inspect.signature(self.transport.configure_topic).parameters
        except (TypeError, ValueError):  # no signature to read: let the call decide
            return
        if "partitions" not in parameters and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
        ):
            raise TypeError(
                f"{type(self.transport).__name__} has no partitioned topics (its "
                "configure_topic takes no partitions): upgrade the transport, or leave "
                "partitions out"
            )

    async def topic_stats(self, topic: str | None = None) -> list[TopicStats]:
        """Per topic: its partitions, its retention, how many events it retains and the
        oldest one's age.

        All topics with subscribers, or just ``topic``.
        """
        topics = [validate_topic(topic)] if topic is not None else await self.transport.topics()
        return [await self.transport.topic_stats(name) for name in topics]

    async def rewind(
        self,
        topic: str,
        *,
        to: Start = "earliest",
        group: str | None = None,
        dry_run: bool = False,
    ) -> int:
        """Deliver ``topic``'s retained events from ``to`` on to this broker's group (or
        ``group``) again, oldest first; returns how many (with ``dry_run``: how many it
        would deliver now, changing nothing).

        This is how a service rebuilds a projection. The events join the back of the
        group's queue as fresh deliveries; events the group still holds are left out
        (they are delivered anyway). Consumers running meanwhile go on with what they
        had queued, then get the rewound events, then those published since the rewind
        began. Raises ValueError if the group does not subscribe ``topic``.
        """
        history = _history(to)
        if history is None:
            raise ValueError('rewind needs to="earliest" or a datetime; "latest" rewinds nothing')
        return await self.transport.rewind(
            validate_topic(topic), self._require_group(group), history=history, dry_run=dry_run
        )

    async def dead_letters(
        self, topic: str, *, group: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """Dead events of ``topic`` for this broker's group (or ``group``), oldest first.

        ``offset`` skips that many of the oldest, to read a long list a page at a time.
        """
        return await self.transport.dead_letters(
            validate_topic(topic), self._require_group(group), limit=limit, offset=offset
        )

    async def replay_dead(
        self,
        topic: str,
        event_ids: Sequence[str] | None = None,
        *,
        group: str | None = None,
    ) -> int:
        """Give dead events (all, or ``event_ids``) another full set of attempts."""
        return await self.transport.replay_dead(
            validate_topic(topic), self._require_group(group), event_ids
        )

    async def purge_dead(
        self,
        topic: str,
        event_ids: Sequence[str] | None = None,
        *,
        group: str | None = None,
    ) -> int:
        """Delete dead events (all, or ``event_ids``) for good."""
        return await self.transport.purge_dead(
            validate_topic(topic), self._require_group(group), event_ids
        )


def _history(start: Start) -> float | None:
    """How many seconds back ``start`` reaches (None: not at all; math.inf: everything)."""
    if start == "latest":
        return None
    if start == "earliest":
        return math.inf
    if not isinstance(start, datetime):
        raise ValueError(f'start must be "latest", "earliest" or a datetime, got {start!r}')
    if start.tzinfo is None:
        raise ValueError(f"start must be an aware datetime (with a time zone), got {start!r}")
    return max(0.0, (datetime.now(UTC) - start).total_seconds())


def parse_start(text: str) -> Start:
    """A :data:`Start` from operator input: ``earliest``, ``latest``, or an ISO 8601 time
    (UTC when it names no zone). Raises ValueError naming what is accepted."""
    if text in ("earliest", "latest"):
        return text  # type: ignore[return-value]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither 'earliest' nor an ISO time such as 2026-12-01T09:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
