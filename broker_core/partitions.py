"""Partitioned topics: how many partitions a topic may have, and which one an event joins.

A store that spreads a topic over several partitions (Redis Cluster: one hash tag, so one
slot, per partition) routes each event with :func:`partition_of`: by its ordering key, so
that the events of one key share a partition and keep their order, and an event without
a key by its id, so that republishing an id reaches the partition that may hold it
already. Every transport and the test model use this one function, so that where an
event goes is the same everywhere and never depends on the process.
"""

from __future__ import annotations

import zlib

from broker_core.errors import PartitionChangeRefused

__all__ = ["MAX_PARTITIONS", "partition_change_refused", "partition_of", "validate_partitions"]

MAX_PARTITIONS = 256
"""The most partitions a topic may have: a claim asks every partition of its topics, so
the count bounds the work of one claim."""


def validate_partitions(partitions: object) -> int:
    """Return ``partitions`` if it is a whole number from 1 to :data:`MAX_PARTITIONS`, else
    raise ValueError."""
    if (
        isinstance(partitions, bool)
        or not isinstance(partitions, int)
        or not 1 <= partitions <= MAX_PARTITIONS
    ):
        raise ValueError(
            f"partitions must be a whole number from 1 to {MAX_PARTITIONS}, got {partitions!r}"
        )
    return partitions


def partition_of(event_id: str, key: str | None, partitions: int) -> int:
    """The partition (0 to ``partitions`` - 1) an event joins: by a CRC-32 of its ordering
    key, or of its id when it has none.

    Stable across processes, machines and Python versions (no salted ``hash()``).
    """
    if partitions == 1:
        return 0
    text = event_id if key is None else key
    return zlib.crc32(text.encode("utf-8", "surrogateescape")) % partitions


def partition_change_refused(
    topic: str, current: int, wanted: int, holding: str
) -> PartitionChangeRefused:
    """The error of a partition change refused because ``topic`` holds events, ``holding``
    saying which (e.g. ``"group 'billing' holds 3 events"``), in words every transport
    shares."""
    return PartitionChangeRefused(
        f"topic {topic!r} has {current} partition(s) and {holding}: its partition count "
        f"can only change (to {wanted}) while it holds no event. Let its groups finish "
        "and purge their dead letters (or unsubscribe them), remove its retention "
        "(configure_topic without max_age and max_events), then configure it again; or "
        f"publish to a new topic with partitions={wanted}. Nothing was changed."
    )
