"""An embedded event broker for Python microservices.

Publish an event and every subscribing group receives it; the instances of a group
compete for it; a crashed instance's events go to another one; nothing is lost.
"""

from broker_core.broker import Broker
from broker_core.cancellation import cancel_and_wait
from broker_core.clock import Clock, ManualClock
from broker_core.codec import DecodeError
from broker_core.delivery import Delivery
from broker_core.errors import (
    BrokerError,
    EventTooLarge,
    InvalidEvent,
    InvalidName,
    LeaseLost,
    PartitionChangeRefused,
    SubscriptionMismatch,
    TransportError,
    UnknownTransport,
)
from broker_core.events import Event, UnknownEvent
from broker_core.hooks import Outcome, OutcomeKind, hookimpl
from broker_core.names import validate_group, validate_key, validate_topic
from broker_core.partitions import partition_change_refused, partition_of, validate_partitions
from broker_core.retention import validate_history, validate_retention
from broker_core.retry import RetryPolicy
from broker_core.settings import BrokerOptions, BrokerSettings
from broker_core.sync import SyncBroker
from broker_core.text import safe_text
from broker_core.transport import (
    DeadLetter,
    Message,
    QueueStats,
    Receipt,
    TopicStats,
    Transport,
)
from broker_core.urls import redact

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerOptions",
    "BrokerSettings",
    "Clock",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "Event",
    "EventTooLarge",
    "InvalidEvent",
    "InvalidName",
    "LeaseLost",
    "ManualClock",
    "Message",
    "Outcome",
    "OutcomeKind",
    "PartitionChangeRefused",
    "QueueStats",
    "Receipt",
    "RetryPolicy",
    "SubscriptionMismatch",
    "SyncBroker",
    "TopicStats",
    "Transport",
    "TransportError",
    "UnknownEvent",
    "UnknownTransport",
    "cancel_and_wait",
    "hookimpl",
    "partition_change_refused",
    "partition_of",
    "redact",
    "safe_text",
    "validate_group",
    "validate_history",
    "validate_key",
    "validate_partitions",
    "validate_retention",
    "validate_topic",
]
