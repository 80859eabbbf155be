"""The examples run as a newcomer runs them, on the embedded default, and say they worked."""

from __future__ import annotations

import subprocess
import sys

import pytest
from checkout import REPOSITORY, checkout_env


@pytest.mark.parametrize(
    ("example", "last_line"),
    [
        ("quickstart.py", None),
        ("two_services.py", None),
        ("outbox_relay.py", "every event handled once by each group"),
    ],
)
def test_example_runs(example: str, last_line: str | None) -> None:
    done = subprocess.run(
        [sys.executable, str(REPOSITORY / "examples" / example)],
        capture_output=True,
        text=True,
        timeout=60,
        env=checkout_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    if last_line is not None:
        assert done.stdout.strip().splitlines()[-1] == last_line
