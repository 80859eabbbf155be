"""The names spans and metrics carry: OpenTelemetry's messaging conventions, then the broker's own.

The conventions' names are written out here rather than imported from
``opentelemetry-semantic-conventions``, which the API does not depend on.
"""

from __future__ import annotations

__all__ = [
    "ATTEMPT",
    "BATCH_COUNT",
    "CONSUMER_GROUP",
    "COPIES",
    "DEFAULT_SYSTEM",
    "DESTINATION",
    "ERROR_TYPE",
    "MESSAGE_ID",
    "MESSAGE_KEY",
    "OPERATION_NAME",
    "OPERATION_TYPE",
    "OUTCOME",
    "RETRY_DELAY",
    "SYSTEM",
    "error_type",
]

DEFAULT_SYSTEM = "embedded-event-broker"
"""The ``messaging.system`` spans and metrics name unless the plugin is told another."""

SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
CONSUMER_GROUP = "messaging.consumer.group.name"
MESSAGE_ID = "messaging.message.id"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
BATCH_COUNT = "messaging.batch.message_count"
ERROR_TYPE = "error.type"

# The conventions name no attempt counter, ordering key or outcome common to all systems.
ATTEMPT = "broker.delivery.attempt"
MESSAGE_KEY = "broker.message.key"
OUTCOME = "broker.outcome"
RETRY_DELAY = "broker.retry.delay"
COPIES = "broker.publish.copies"


def error_type(exc: BaseException) -> str:
    """The exception's fully qualified class name, as the conventions want ``error.type``."""
    cls = type(exc)
    # Builtins are named bare (ValueError), as the conventions' examples do.
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
