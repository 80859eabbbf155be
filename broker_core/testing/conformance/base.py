"""What every conformance mixin shares: the fixtures, the names the tests use, a helper.

Every async test is marked ``asyncio`` itself, so the suite runs under pytest-asyncio in
strict mode too. Time only moves through the :class:`~broker_core.clock.ManualClock`
the factory receives; lease and delay values are chosen so that no deadline ever falls
exactly on the clock's reading. Only ``wait()`` tests use real time, bounded to fractions
of a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from broker_core.testing.harness import Harness, TransportFactory, open_harness
from broker_core.transport import QueueStats

__all__ = ["G2", "T2", "ConformanceBase", "G", "T"]

T = "orders"
T2 = "payments"
G = "billing"
G2 = "shipping"


def _counts(stats: QueueStats) -> tuple[int, int, int, int]:
    """The four counts of ``stats`` as one tuple, so a test checks them in one assert."""
    return (stats.ready, stats.leased, stats.delayed, stats.dead)


class ConformanceBase:
    """The fixtures of the suite; every themed mixin derives from it.

    A subclass (of :class:`~broker_core.testing.conformance.TransportConformance` or of
    any one mixin) supplies the ``transport_factory`` fixture.
    """

    @pytest.fixture
    def transport_factory(self) -> TransportFactory:
        """Override in the subclass: build an unconnected transport over an empty store."""
        pytest.fail("a conformance subclass must provide a transport_factory fixture")

    @pytest_asyncio.fixture
    async def harness(self, transport_factory: TransportFactory) -> AsyncIterator[Harness]:
        """A connected transport over an empty store and its ManualClock; closed after."""
        async with open_harness(transport_factory) as h:
            yield h
