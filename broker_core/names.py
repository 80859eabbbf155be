"""Validation of topic and group names.

Names become parts of storage keys (for Redis, inside a hash tag), so the alphabet is
kept to characters that cannot break any key layout: no braces, colons or whitespace.
"""

from __future__ import annotations

import re

from broker_core.errors import InvalidName

__all__ = ["MAX_NAME_LENGTH", "validate_group", "validate_name", "validate_topic"]

MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate_name(kind: str, name: object) -> str:
    """Return ``name`` unchanged if it is a valid topic or group name, else raise InvalidName."""
    if not isinstance(name, str):
        raise InvalidName(f"{kind} name must be a string, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid {kind} name {name!r}: use 1-{MAX_NAME_LENGTH} characters from "
            "letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def validate_topic(topic: object) -> str:
    """Validate a topic name."""
    return validate_name("topic", topic)


def validate_group(group: object) -> str:
    """Validate a group name."""
    return validate_name("group", group)
