"""Checks for free text and identifiers that reach database columns."""

from __future__ import annotations

import re

from .errors import InvalidRequest

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ID_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(value: str | None, field: str, max_len: int, *, required: bool = False) -> str | None:
    """Refuse NUL/control characters and over-long values with a clear message."""
    if value is None:
        if required:
            raise InvalidRequest(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string")
    if required and not value.strip():
        raise InvalidRequest(f"{field} must not be empty")
    if _CONTROL.search(value):
        raise InvalidRequest(f"{field} must not contain control characters")
    if len(value) > max_len:
        raise InvalidRequest(f"{field} is too long ({len(value)} characters, at most {max_len})")
    return value


def valid_id(value: str | None, max_len: int = 255) -> bool:
    """Whether a lookup key can exist at all (ids never contain control characters)."""
    return isinstance(value, str) and 0 < len(value) <= max_len and not _ID_CONTROL.search(value)
