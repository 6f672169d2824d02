"""Time in the engine: always timezone-aware UTC, rendered as ISO 8601 the same on every database."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(at: datetime) -> datetime:
    """SQLite returns naive datetimes (they were written as UTC); PostgreSQL returns aware ones."""
    if at.tzinfo is None:
        return at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc)


def iso(at: datetime | None) -> str | None:
    return None if at is None else as_utc(at).isoformat(timespec="microseconds")
