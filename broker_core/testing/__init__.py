"""The conformance suite any transport runs against itself.

A transport package proves itself with two lines of test code::

    import pytest
    from broker_core.testing import TransportConformance

    class TestMyTransport(TransportConformance):
        @pytest.fixture
        def transport_factory(self):
            return lambda clock: MyTransport(clock=clock, store=fresh_empty_store())

``TransportConformance`` holds async pytest tests of every transition of the delivery
state machine, and ``test_state_machine``, which runs :func:`run_transport_state_machine`:
a hypothesis state machine that drives the transport and a pure model side by side and
checks invariants 1-12 of docs/semantics.md after every step. It is the
composition of themed mixins (``ClaimConformance``, ``LeaseConformance``, ...) in
:mod:`broker_core.testing.conformance`; subclass one of them to run only its theme.
"""

from broker_core.testing.conformance import TransportConformance
from broker_core.testing.harness import Harness, TransportFactory, body_of, open_harness
from broker_core.testing.model import DeliveryModel, State
from broker_core.testing.statemachine import (
    DEFAULT_SETTINGS,
    TransportStateMachine,
    run_transport_state_machine,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "DeliveryModel",
    "Harness",
    "State",
    "TransportConformance",
    "TransportFactory",
    "TransportStateMachine",
    "body_of",
    "open_harness",
    "run_transport_state_machine",
]
