"""Text that every store can hold and every reader can decode."""

from __future__ import annotations

__all__ = ["safe_text"]


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8: each lone surrogate becomes a backslash escape.

    Error messages may hold lone surrogates (``os.fsdecode`` makes them from a bad file
    name); stored as they are, they would make a dead-letter listing undecodable.
    """
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text
