"""Subprocesses of the tests run the code of this checkout.

A plain ``python script.py`` finds the packages wherever the interpreter has them
installed, which may be another checkout (an editable install); the tests' own processes
must run the code under test.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPOSITORY", "checkout_env"]

REPOSITORY = Path(__file__).resolve().parent.parent


def checkout_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout first on PYTHONPATH, plus ``extra``."""
    path = os.pathsep.join(p for p in (str(REPOSITORY), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
