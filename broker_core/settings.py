"""Broker options: one pydantic-settings model, read from keyword arguments or environment."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker_core.retry import RetryPolicy

__all__ = ["BrokerOptions", "BrokerSettings"]


class BrokerOptions(BaseModel):
    """Every option of a :class:`~broker_core.broker.Broker`, with its default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(default="memory://", description="Transport URL; its scheme picks the plugin.")
    group: str | None = Field(
        default=None,
        description="The subscribing service this broker consumes for; publishing needs none.",
    )
    lease: float = Field(
        default=30.0,
        gt=0,
        description="Seconds an event stays reserved for a consumer; renewed while it runs.",
    )
    concurrency: int = Field(default=16, ge=1, description="Handlers running at once.")
    prefetch: int = Field(
        default=200,
        ge=0,
        description="Most events claimed ahead of the handlers into a local buffer (their "
        "leases renewed, given back on stop); the buffer only grows as far as the handlers "
        "keep up, so slow handlers leave the queue to other consumers.",
    )
    max_attempts: int | None = Field(
        default=None, ge=1, description="Shorthand that overrides retry.max_attempts."
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry schedule.")
    max_event_bytes: int = Field(
        default=1_048_576, ge=1, description="Largest encoded event publish accepts."
    )
    poll_interval: float = Field(
        default=1.0,
        gt=0,
        description="Longest idle wait between claims: bounds how late an expired lease "
        "of a crashed consumer is noticed beyond its expiry.",
    )
    shutdown_grace: float = Field(
        default=10.0, ge=0, description="Seconds stop() lets running handlers finish."
    )
    dedup_window: float = Field(
        default=300.0,
        ge=0,
        description="Seconds during which publishing an event id already published to "
        "the topic enqueues nothing, even once every group is done with it (0: only "
        "while some group still holds it).",
    )

    def retry_policy(self) -> RetryPolicy:
        """The retry policy with the ``max_attempts`` shorthand applied."""
        if self.max_attempts is None:
            return self.retry
        return self.retry.model_copy(update={"max_attempts": self.max_attempts})


class BrokerSettings(BaseSettings, BrokerOptions):
    """The broker options read from the environment (and ``.env``), for ``from_settings``.

    Each option is ``BROKER_<NAME>`` (``BROKER_URL``, ``BROKER_GROUP``,
    ``BROKER_LEASE``, ...); retry options nest with a double underscore
    (``BROKER_RETRY__INITIAL_DELAY=1``).
    """

    model_config = SettingsConfigDict(
        env_prefix="BROKER_", env_nested_delimiter="__", env_file=".env", frozen=True
    )
