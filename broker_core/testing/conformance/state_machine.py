"""The hypothesis state machine as a conformance test: the whole machine in one run."""

from __future__ import annotations

from typing import ClassVar

import hypothesis

from broker_core.testing.conformance.base import ConformanceBase
from broker_core.testing.harness import TransportFactory
from broker_core.testing.statemachine import run_transport_state_machine

__all__ = ["StateMachineConformance"]


class StateMachineConformance(ConformanceBase):
    """Random sequences of every transition against the pure model: invariants 1-12.

    Set ``state_machine_settings`` to resize the hypothesis run (None keeps the defaults
    of :data:`~broker_core.testing.statemachine.DEFAULT_SETTINGS`).
    """

    state_machine_settings: ClassVar[hypothesis.settings | None] = None

    def test_state_machine(self, transport_factory: TransportFactory) -> None:
        """The hypothesis state machine against the pure model: invariants 1-12."""
        run_transport_state_machine(transport_factory, settings=self.state_machine_settings)

    def test_state_machine_partitioned(self, transport_factory: TransportFactory) -> None:
        """The state machine with its first topic over 4 partitions: order per partition
        (invariant 12), everything else as on one."""
        run_transport_state_machine(
            transport_factory, settings=self.state_machine_settings, partitions=4
        )
