"""Validation of topic and group names.

Names become parts of storage keys (for Redis, inside a hash tag), so the alphabet is
kept to characters that cannot break any key layout: no braces, colons or whitespace.
"""

from __future__ import annotations

import re

from broker_core.errors import InvalidName

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_NAME_LENGTH",
    "validate_group",
    "validate_key",
    "validate_name",
    "validate_topic",
]

MAX_NAME_LENGTH = 128
MAX_KEY_LENGTH = 256
# Control characters (NUL above all) are refused: a store may use them as separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# Names that passed: a service uses a handful, and publish checks one per event. Topics
# and groups follow one rule, so they share it. Plain str only (a subclass could compare
# equal to a valid name while being something else); emptied when full, never stale.
_VALID: set[str] = set()
_VALID_MAX = 4096


def validate_name(kind: str, name: object) -> str:
    """Return ``name`` unchanged if it is a valid topic or group name, else raise InvalidName."""
    if type(name) is str and name in _VALID:
        return name
    if not isinstance(name, str):
        raise InvalidName(f"{kind} name must be a string, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid {kind} name {name!r}: use 1-{MAX_NAME_LENGTH} characters from "
            "letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    if type(name) is str:
        if len(_VALID) >= _VALID_MAX:
            _VALID.clear()
        _VALID.add(name)
    return name


def validate_topic(topic: object) -> str:
    """Validate a topic name."""
    return validate_name("topic", topic)


def validate_group(group: object) -> str:
    """Validate a group name."""
    return validate_name("group", group)


def validate_key(key: object) -> str:
    """Return ``key`` unchanged if it is a valid ordering key, else raise InvalidName.

    Any text of 1-256 characters without control characters: an aggregate's id, a UUID,
    ``"customer/42"``.
    """
    if not isinstance(key, str):
        raise InvalidName(f"an ordering key must be a string, got {type(key).__name__}")
    try:
        key.encode()
    except UnicodeEncodeError:
        raise InvalidName(f"invalid ordering key {key!r}: it holds a lone surrogate") from None
    if not key or len(key) > MAX_KEY_LENGTH or _CONTROL.search(key):
        raise InvalidName(
            f"invalid ordering key {key!r}: use 1-{MAX_KEY_LENGTH} characters, "
            "none of them a control character"
        )
    return key
