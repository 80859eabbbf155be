"""``TransportConformance``: the pytest tests every transport must pass.

Subclass it in a test module and provide a ``transport_factory`` fixture returning a
:data:`~broker_core.testing.harness.TransportFactory`::

    class TestMyTransport(TransportConformance):
        @pytest.fixture
        def transport_factory(self) -> TransportFactory:
            return lambda clock: MyTransport(clock=clock, store=fresh_empty_store())

The tests are grouped by theme into mixins, one module each, and ``TransportConformance``
is all of them. While a transport is being written, subclass one mixin instead (say
``class TestMyClaims(ClaimConformance)``, with the same fixture) to run only that theme.
The mixins' names do not start with ``Test``, so importing one does not make pytest
collect it.
"""

from __future__ import annotations

from broker_core.testing.conformance.ack import AckConformance
from broker_core.testing.conformance.base import ConformanceBase
from broker_core.testing.conformance.claim import ClaimConformance
from broker_core.testing.conformance.dead_letters import DeadLetterConformance
from broker_core.testing.conformance.history import HistoryConformance
from broker_core.testing.conformance.isolation import IsolationConformance
from broker_core.testing.conformance.leases import LeaseConformance
from broker_core.testing.conformance.lifecycle import LifecycleConformance
from broker_core.testing.conformance.nack import NackConformance
from broker_core.testing.conformance.names import BAD_NAMES, NameConformance
from broker_core.testing.conformance.ordering import OrderingConformance
from broker_core.testing.conformance.partitions import PartitionConformance
from broker_core.testing.conformance.progress import ProgressConformance
from broker_core.testing.conformance.publish import PublishConformance
from broker_core.testing.conformance.release import ReleaseConformance
from broker_core.testing.conformance.state_machine import StateMachineConformance
from broker_core.testing.conformance.unsubscribe import UnsubscribeConformance

__all__ = [
    "BAD_NAMES",
    "AckConformance",
    "ClaimConformance",
    "ConformanceBase",
    "DeadLetterConformance",
    "HistoryConformance",
    "IsolationConformance",
    "LeaseConformance",
    "LifecycleConformance",
    "NackConformance",
    "NameConformance",
    "OrderingConformance",
    "PartitionConformance",
    "ProgressConformance",
    "PublishConformance",
    "ReleaseConformance",
    "StateMachineConformance",
    "TransportConformance",
    "UnsubscribeConformance",
]


# pytest collects a class's bases last first: listed in reverse, the themes run in the
# order of the delivery state machine, from the whole-machine test to name checks.
class TransportConformance(
    NameConformance,
    PartitionConformance,
    HistoryConformance,
    UnsubscribeConformance,
    ProgressConformance,
    DeadLetterConformance,
    OrderingConformance,
    IsolationConformance,
    ReleaseConformance,
    NackConformance,
    LeaseConformance,
    AckConformance,
    ClaimConformance,
    PublishConformance,
    LifecycleConformance,
    StateMachineConformance,
):
    """Async pytest tests of every transition of the delivery state machine.

    A subclass supplies the ``transport_factory`` fixture; set ``state_machine_settings``
    to resize the hypothesis run of ``test_state_machine`` (None keeps the defaults of
    :data:`~broker_core.testing.statemachine.DEFAULT_SETTINGS`).
    """
