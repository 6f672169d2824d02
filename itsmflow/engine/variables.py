"""Process variables: which value types the engine stores, and the checks at its boundary.

Supported (and round-tripped unchanged through persistence): ``None``, ``bool``, ``int``,
``float`` (finite), ``str``, ``list``/``tuple`` (stored as list), ``dict`` with ``str`` keys,
``datetime.datetime``, ``datetime.date``, ``datetime.timedelta`` and ``decimal.Decimal``.
Anything else is refused with :class:`ValidationFailed` naming the path of the bad value,
before any state changes. Variable names must be identifiers and must not start with ``_``.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from .errors import FieldIssue, ValidationFailed

MAX_DEPTH = 32
RESERVED_NAMES = frozenset({"data_objects"})  # used by SpiffWorkflow itself
_SCALARS = (str, bool, int, type(None))


def check_variables(variables: Any, *, max_bytes: int = 1024 * 1024) -> dict[str, Any]:
    """Validate a variables mapping; return it with tuples turned into lists."""
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise ValidationFailed("variables must be a JSON object", [FieldIssue("$", "expected an object")])
    issues: list[FieldIssue] = []
    for name in variables:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            issues.append(
                FieldIssue(f"$.{name}", "variable names must be identifiers (letters, digits, _) not starting with _")
            )
        elif name in RESERVED_NAMES:
            issues.append(FieldIssue(f"$.{name}", f"{name!r} is reserved by the engine"))
    cleaned = _clean(variables, "$", 0, issues)
    if issues:
        raise ValidationFailed("unsupported variable values", issues)
    size = len(json.dumps(to_json_compatible(cleaned)))
    if size > max_bytes:
        raise ValidationFailed(
            f"variables are too large ({size} bytes, limit {max_bytes})", [FieldIssue("$", "too large")]
        )
    return cleaned


def _clean(value: Any, path: str, depth: int, issues: list[FieldIssue]) -> Any:
    if depth > MAX_DEPTH:
        issues.append(FieldIssue(path, f"nested deeper than {MAX_DEPTH} levels"))
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            issues.append(FieldIssue(path, "NaN and infinity are not supported"))
        return value
    if isinstance(value, _SCALARS) or isinstance(value, (datetime, date, timedelta, Decimal)):
        return value
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{path}[{i}]", depth + 1, issues) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                issues.append(FieldIssue(f"{path}.{k}", "object keys must be strings"))
                continue
            out[k] = _clean(v, f"{path}.{k}", depth + 1, issues)
        return out
    issues.append(FieldIssue(path, f"values of type {type(value).__name__} are not supported"))
    return None


def to_json_compatible(value: Any) -> Any:
    """Render variables for JSON output (API responses, audit data): dates as ISO 8601, decimals as strings."""
    if isinstance(value, dict):
        return {k: to_json_compatible(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [to_json_compatible(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, _SCALARS) or isinstance(value, float):
        return value
    return repr(value)


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Changed top-level variables as ``{name: {"old": …, "new": …}}`` (JSON-compatible)."""
    changes: dict[str, dict[str, Any]] = {}
    for key in set(old) | set(new):
        if key.startswith("_") or key == "data_objects":
            continue
        if key not in new:
            changes[key] = {"old": to_json_compatible(old[key]), "new": None, "removed": True}
        elif key not in old or old[key] != new[key]:
            changes[key] = {"old": to_json_compatible(old.get(key)), "new": to_json_compatible(new[key])}
    return changes
