"""OpenAPI descriptions of the error responses a route can return (all ``application/problem+json``)."""

from __future__ import annotations

from typing import Any

from .models import Problem

_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or invalid bearer token",
    403: "The caller may not do this",
    404: "No such resource",
    409: "Conflict with the current state",
    413: "Request body too large",
    422: "Validation failed",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the given status codes (401 and 422 are added to every route)."""
    return {code: {"model": Problem, "description": _DESCRIPTIONS.get(code, "Error")} for code in codes}
