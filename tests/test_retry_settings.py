"""Retry policy, options and settings."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker_core import BrokerOptions, BrokerSettings, RetryPolicy


@given(
    attempt=st.integers(min_value=1, max_value=60),
    initial=st.floats(min_value=0, max_value=10),
    multiplier=st.floats(min_value=1, max_value=5),
    jitter=st.floats(min_value=0, max_value=1),
    seed=st.integers(),
)
def test_delay_stays_within_its_bounds(
    attempt: int, initial: float, multiplier: float, jitter: float, seed: int
) -> None:
    policy = RetryPolicy(
        initial_delay=initial, multiplier=multiplier, max_delay=initial * 20, jitter=jitter
    )
    base = min(policy.max_delay, initial * multiplier ** (attempt - 1))
    delay = policy.delay(attempt, random.Random(seed))
    assert base * (1 - jitter) - 1e-9 <= delay <= base + 1e-9


def test_delay_grows_exponentially_without_jitter() -> None:
    policy = RetryPolicy(initial_delay=1, multiplier=2, max_delay=5, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_exhausted_counts_deliveries() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_delay": -1},
        {"jitter": 2},
        {"initial_delay": 5, "max_delay": 1},
    ],
)
def test_bad_retry_options_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_options_refuse_unknown_and_bad_values() -> None:
    with pytest.raises(ValueError, match="leese"):
        BrokerOptions(leese=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="lease"):
        BrokerOptions(lease=0)
    with pytest.raises(ValueError, match="concurrency"):
        BrokerOptions(concurrency=0)


def test_max_attempts_shorthand_overrides_the_policy() -> None:
    options = BrokerOptions(max_attempts=2, retry=RetryPolicy(max_attempts=7, initial_delay=3))
    assert options.retry_policy() == RetryPolicy(max_attempts=2, initial_delay=3)
    assert BrokerOptions().retry_policy() == RetryPolicy()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_URL", "memory://env")
    monkeypatch.setenv("BROKER_GROUP", "billing")
    monkeypatch.setenv("BROKER_LEASE", "2.5")
    monkeypatch.setenv("BROKER_RETRY__INITIAL_DELAY", "0.1")
    settings = BrokerSettings()
    assert (settings.url, settings.group, settings.lease) == ("memory://env", "billing", 2.5)
    assert settings.retry.initial_delay == 0.1
    # Plain options never read the environment.
    assert BrokerOptions().url == "memory://"
