"""The documents say what the code does: one state machine, and invariants that exist."""

from __future__ import annotations

import re
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


def test_every_invariant_cited_by_number_is_defined_in_the_semantics() -> None:
    section = SEMANTICS.split("## Invariants", 1)[1].split("\n## ", 1)[0]
    defined = {int(n) for n in re.findall(r"^(\d+)\. ", section, flags=re.MULTILINE)}
    assert defined == set(range(1, 13))
    cited: set[int] = set()
    for pattern in ("*.py", "*.md", "*.lua"):
        for path in REPOSITORY.glob(f"**/{pattern}"):
            if ".venv" in path.parts or ".tox" in path.parts:
                continue
            for numbers in re.findall(
                r"[Ii]nvariants? (\d+(?:(?:, |-| and )\d+)*)", path.read_text()
            ):
                cited.update(int(n) for n in re.findall(r"\d+", numbers))
    assert cited and cited <= defined
