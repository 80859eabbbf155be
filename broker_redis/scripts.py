"""The Lua scripts: one file per state transition under ``scripts/``, loaded once.

A script may pull shared helpers from ``scripts/includes/<name>.lua`` with a line
``--- @include "<name>"``; each helper is inlined once, where it is first included
(helpers may include helpers). The result is what Redis runs and what its SHA1 names.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["SCRIPT_NAMES", "Script", "load_script"]

SCRIPT_NAMES = (
    "ack",
    "claim",
    "dead_letters",
    "extend",
    "kill",
    "nack",
    "poll",
    "publish",
    "purge_dead",
    "replay_dead",
    "stats",
)

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Script:
    """A script's final source and the SHA1 that EVALSHA calls it by."""

    name: str
    source: str
    sha: str


def _read(*parts: str) -> str:
    return resources.files(__package__).joinpath("scripts", *parts).read_text("utf-8")


def _expand(source: str, seen: set[str]) -> str:
    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _expand(_read("includes", f"{name}.lua"), seen).rstrip("\n")

    return _INCLUDE.sub(include, source)


@cache
def load_script(name: str) -> Script:
    """The script ``scripts/<name>.lua`` with its includes inlined."""
    if name not in SCRIPT_NAMES:
        raise ValueError(f"no script named {name!r}")
    source = _expand(_read(f"{name}.lua"), set())
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())
