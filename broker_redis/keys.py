"""Every Redis key the transport uses, built in this one place (see docs/redis-keys.md).

All keys of one topic share the hash tag ``{<topic>}``, so every script, which
only ever touches one topic, works unchanged on Redis Cluster. The only key outside a
topic's slot is the registry of topics, which no script touches.

A topic of N > 1 partitions has N *units*, each a complete set of the topic's keys under
a hash tag of its own, ``{<topic>~<p>~<N>~<salt>}``, whose salt is chosen so that unit
``p`` lands in the middle of the ``p``-th of N equal parts of the slots
(:func:`partition_slot`, :func:`partition_tag`): the units are evenly spaced over the
slots, so over the masters of an evenly sharded cluster. ``~`` is not
allowed in names, so no unit's tag is another topic's. A topic of 1 partition is the one
unit ``{<topic>}``, whose ``layout`` key also holds the count of every topic (absent: 1).

The field names of :class:`TopicKeys` and :class:`GroupKeys` are the names each script's
header declares its KEYS by (see :mod:`broker_redis.scripts`): a new key is a new field.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import count
from typing import TypeVar

from broker_core.names import validate_group, validate_topic

__all__ = [
    "DEFAULT_PREFIX",
    "SLOTS",
    "GroupKeys",
    "Keys",
    "TopicKeys",
    "partition_slot",
    "partition_tag",
    "slot_of",
    "validate_prefix",
]

DEFAULT_PREFIX = "broker"

# Colons are allowed so that applications can namespace (``app:prod``); braces are not,
# since they would move the hash tag.
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a safe key prefix, else raise ValueError."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"invalid key prefix {prefix!r}: use 1-64 characters from letters, digits, "
            "'.', '_', ':' and '-', starting with a letter or digit"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class TopicKeys:
    """The keys one topic owns, shared by all of its groups."""

    msg: str
    """HASH event id -> body, stored once for all groups."""
    refs: str
    """HASH event id -> number of groups that still hold the event (not acked or purged)."""
    groups: str
    """SET of subscribed group names."""
    dedup: str
    """ZSET event id -> end of its dedup window (seconds on the transport's clock)."""
    eventkeys: str
    """HASH event id -> its ordering key, for events that have one; freed with the body."""
    ordered: str
    """SET of the groups subscribed with ``ordered=True``."""
    seq: str
    """STRING counter: the position of each event in its key's history (lanes)."""
    retention: str
    """HASH max_age, max_events (each only when set), position (entries ever appended to
    the history) and last_ms (the newest entry's milliseconds)."""
    log: str
    """STREAM, the history of a topic with retention: per event i (id), t (when it was
    published, seconds) and p (its position)."""
    logged: str
    """HASH event id -> its entry in ``log``, while the history holds it."""
    pins: str
    """HASH group -> JSON of its history copy in progress (see copy_history.lua)."""
    published: str
    """STRING counter of the events published to the topic (not skipped), for rates."""
    layout: str
    """STRING, the partition count: in the topic's own unit ``{<topic>}`` the count every
    client follows (absent: 1), in each unit of an N-layout N; ``<N>><M>`` while a change
    from N to M partitions has sealed the unit (see seal.lua)."""


@dataclass(frozen=True, slots=True)
class GroupKeys:
    """The keys of one (topic, group): its copy of the delivery state machine."""

    ready: str
    """LIST of event ids, next to claim at the head."""
    leased: str
    """ZSET event id -> lease deadline (seconds on the transport's clock)."""
    tokens: str
    """HASH event id -> token of the live lease (fencing)."""
    attempts: str
    """HASH event id -> deliveries so far."""
    errors: str
    """HASH event id -> last error reported by nack, carried into the dead letter."""
    delayed: str
    """ZSET event id -> due time."""
    dead: str
    """LIST of dead event ids, oldest death first."""
    deadinfo: str
    """HASH event id -> JSON {reason, error, attempts, died_at}."""
    marker: str
    """LIST holding at most one element while READY may have events; waiters block on it."""
    suspects: str
    """SET of event ids whose last lease expired: each is handed out alone."""
    heads: str
    """HASH ordering key -> the one event of the key an ordered group holds out: READY to
    claim, LEASED or DELAYED. Only ordered groups have entries."""
    lanes: str
    """ZSET (all scores 0) of the other events of those keys, waiting their turn: members
    ``<key> NUL <position, 16 digits> NUL <event id>``, so a key's next is its first by
    lexical order."""
    held: str
    """SET of the event ids the group holds (not DONE), kept on topics with retention
    only: a rewind leaves them out."""
    acked: str
    """STRING counter of the events the group acked, for rates."""


class Keys:
    """Builds key names under one prefix; every name passed in is validated first.

    The keys of each (topic, group) are built, and its names validated, once: every
    publish, claim and ack asks for them again. The caches hold at most ``_CACHE_SIZE``
    names, first in, first out: when full, the name added longest ago is dropped (however
    recently it was used), so a stream of distinct names cannot grow them without bound.
    """

    __slots__ = ("_group_keys", "_topic_keys", "prefix")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = validate_prefix(prefix)
        self._topic_keys: dict[tuple[str, int, int], TopicKeys] = {}
        self._group_keys: dict[tuple[str, str, int, int], GroupKeys] = {}

    @property
    def topics(self) -> str:
        """SET of every topic ever subscribed (the registry behind ``topics()``)."""
        return f"{self.prefix}:topics"

    def _tag(self, topic: str, partition: int, partitions: int) -> str:
        if partitions == 1:
            return f"{self.prefix}:{{{validate_topic(topic)}}}"
        return f"{self.prefix}:{{{partition_tag(validate_topic(topic), partition, partitions)}}}"

    def topic(self, topic: str, partition: int = 0, partitions: int = 1) -> TopicKeys:
        """The keys shared by all groups of ``topic``: of its unit ``partition`` of a
        layout of ``partitions`` (the default: the topic's own unit ``{<topic>}``)."""
        try:
            return self._topic_keys[topic, partition, partitions]
        except (KeyError, TypeError):  # TypeError: unhashable, so not a name
            pass
        base = self._tag(topic, partition, partitions)
        keys = TopicKeys(
            msg=f"{base}:msg",
            refs=f"{base}:refs",
            groups=f"{base}:groups",
            dedup=f"{base}:dedup",
            eventkeys=f"{base}:eventkeys",
            ordered=f"{base}:ordered",
            seq=f"{base}:seq",
            retention=f"{base}:retention",
            log=f"{base}:log",
            logged=f"{base}:logged",
            pins=f"{base}:pins",
            published=f"{base}:published",
            layout=f"{base}:layout",
        )
        _remember(self._topic_keys, (topic, partition, partitions), keys)
        return keys

    def group(self, topic: str, group: str, partition: int = 0, partitions: int = 1) -> GroupKeys:
        """The keys of ``group``'s copy of ``topic`` (in unit ``partition`` of a layout of
        ``partitions``, as for :meth:`topic`)."""
        try:
            return self._group_keys[topic, group, partition, partitions]
        except (KeyError, TypeError):  # TypeError: unhashable, so not a name
            pass
        base = f"{self._tag(topic, partition, partitions)}:g:{validate_group(group)}"
        keys = GroupKeys(
            ready=f"{base}:ready",
            leased=f"{base}:leased",
            tokens=f"{base}:tokens",
            attempts=f"{base}:attempts",
            errors=f"{base}:errors",
            delayed=f"{base}:delayed",
            dead=f"{base}:dead",
            deadinfo=f"{base}:deadinfo",
            marker=f"{base}:marker",
            suspects=f"{base}:suspects",
            heads=f"{base}:heads",
            lanes=f"{base}:lanes",
            held=f"{base}:held",
            acked=f"{base}:acked",
        )
        _remember(self._group_keys, (topic, group, partition, partitions), keys)
        return keys


_CACHE_SIZE = 1024

_K = TypeVar("_K")
_V = TypeVar("_V")


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    """Add to a cache of at most _CACHE_SIZE entries, dropping the first added when full."""
    if len(cache) >= _CACHE_SIZE:
        del cache[next(iter(cache))]
    cache[key] = value


# -- the slots of partitions ---------------------------------------------------------------

SLOTS = 16384
"""Hash slots of a Redis Cluster."""


def slot_of(tag: str) -> int:
    """The slot of a key whose hash tag is ``tag``: CRC16 (XMODEM) mod 16384, as Redis
    computes it (``binascii.crc_hqx`` is the same CRC)."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


def partition_slot(partition: int, partitions: int) -> int:
    """The slot unit ``partition`` of a layout of ``partitions`` lands in: the middle of
    its 1/partitions of the slots, so evenly spaced, and as far as can be from where a
    cluster sharded evenly over a divisor of ``partitions`` masters has its boundaries
    (``redis-cli --cluster create`` gives 3 masters slots 0-5460, 5461-10922 and
    10923-16383: ``p * 16384 // 12`` would put unit 8 of 12 on the second one's last
    slot, and 5 units on it)."""
    return (2 * partition + 1) * SLOTS // (2 * partitions)


@lru_cache(maxsize=4096)
def partition_tag(topic: str, partition: int, partitions: int) -> str:
    """The hash tag of unit ``partition`` of ``topic``'s layout of ``partitions``:
    ``<topic>~<partition>~<partitions>~<salt>`` with the smallest salt (0, 1, 2, ...) whose
    slot is :func:`partition_slot`.

    The salt is found in microseconds (see :func:`_salt`) and cached; the tags are part
    of the stored layout, so this definition never changes.
    """
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} of {partitions}")
    prefix = f"{topic}~{partition}~{partitions}~"
    return f"{prefix}{_salt(prefix.encode(), partition_slot(partition, partitions))}"


def _first_of_each_crc(numbers: range, form: bytes) -> dict[int, int]:
    """CRC of each number written as ``form % number`` -> the smallest such number."""
    table: dict[int, int] = {}
    for number in numbers:
        table.setdefault(binascii.crc_hqx(form % number, 0), number)
    return table


@cache
def _salt_tables() -> tuple[list[dict[int, int]], dict[int, int]]:
    """Per digit count 1-4 the table of the numbers of that many digits, and the table of
    the four-digit endings 0000-9999 (about 20,000 CRCs, once per process)."""
    short = [
        _first_of_each_crc(range(10 ** (d - 1) if d > 1 else 0, 10**d), b"%d") for d in (1, 2, 3, 4)
    ]
    return short, _first_of_each_crc(range(10_000), b"%04d")


def _salt(prefix: bytes, slot: int) -> int:
    """The smallest number whose decimal text after ``prefix`` hashes to ``slot``.

    A CRC without final XOR is linear: ``crc(prefix + s) = crc(s) ^ crc(zeros, crc(prefix))``
    for zeros as long as ``s``. So the texts of one length need only a table lookup per
    CRC value of the slot (four: the CRC is 16 bits, the slot its low 14), instead of a
    CRC each (the search would try about 16,000 texts per tag).
    """
    short, endings = _salt_tables()
    start = binascii.crc_hqx(prefix, 0)
    wanted = [slot + k * SLOTS for k in range(4)]

    def lookup(table: dict[int, int], shift: int) -> int | None:
        found = [table[c ^ shift] for c in wanted if c ^ shift in table]
        return min(found) if found else None

    for digits, table in enumerate(short, 1):
        if (number := lookup(table, binascii.crc_hqx(bytes(digits), start))) is not None:
            return number
    for high in count(1):  # 10000 and up: the text of `high`, then four digits
        head = binascii.crc_hqx(b"%d" % high, start)
        if (low := lookup(endings, binascii.crc_hqx(bytes(4), head))) is not None:
            return high * 10_000 + low
    raise AssertionError("unreachable")  # pragma: no cover
