"""The documents say what the code does."""

from __future__ import annotations

from pathlib import Path

import broker_core.transport

REPOSITORY = Path(__file__).resolve().parent.parent
SEMANTICS = (REPOSITORY / "docs" / "semantics.md").read_text()


def _diagram(text: str) -> list[str]:
    """The lines of the first state-machine drawing in ``text``, without indentation."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("publish ──►"))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return [line.strip() for line in lines[start:end] if not line.strip().startswith("```")]


def test_the_transport_protocol_draws_the_state_machine_of_the_semantics() -> None:
    assert broker_core.transport.__doc__ is not None
    drawn = _diagram(SEMANTICS)
    assert _diagram(broker_core.transport.__doc__) == drawn
    # A claim buries a READY event whose attempts are used up; a kill buries a LEASED one.
    assert any(line.startswith("│   └─claim") and line.endswith("► DEAD") for line in drawn)
    assert any("└─kill" in line for line in drawn)
