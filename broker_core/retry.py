"""Retry policy: how many attempts an event gets and how long to wait between them."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["RetryPolicy"]


class RetryPolicy(BaseModel):
    """Exponential backoff with jitter, bounded by ``max_attempts``.

    A handler that raises on attempt ``n`` (1-based) is retried after
    ``min(max_delay, initial_delay * multiplier ** (n - 1))`` seconds, of which a random
    fraction up to ``jitter`` is taken off, so that failures of many events do not all
    come back at the same moment. An event is delivered at most ``max_attempts`` times;
    an expired lease (a crashed consumer) counts as an attempt.
    """

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=5, ge=1, description="Deliveries before the event is dead.")
    initial_delay: float = Field(default=0.5, ge=0, description="Seconds before the first retry.")
    multiplier: float = Field(default=2.0, ge=1, description="Growth of the delay per attempt.")
    max_delay: float = Field(default=60.0, ge=0, description="Upper bound of one delay, seconds.")
    jitter: float = Field(default=0.2, ge=0, le=1, description="Largest fraction taken off.")

    @model_validator(mode="after")
    def _check_bounds(self) -> RetryPolicy:
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must not be smaller than initial_delay")
        return self

    def exhausted(self, attempt: int) -> bool:
        """Whether a failure of delivery number ``attempt`` leaves no attempt to retry with."""
        return attempt >= self.max_attempts

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retrying after delivery number ``attempt`` failed."""
        exponent = max(attempt - 1, 0)
        base = min(self.max_delay, self.initial_delay * self.multiplier**exponent)
        fraction = (rng or random).random() * self.jitter
        return base * (1.0 - fraction)
