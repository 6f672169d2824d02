"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the API returns has ``type``, ``title``, ``status``, ``detail`` and ``instance`` (the
request path), plus ``errors`` where a list of located problems helps the client:

- :class:`~itsmflow.engine.errors.DeploymentInvalid` → 400, ``errors: [{file, line, column, message}]``
- :class:`~itsmflow.engine.errors.ValidationFailed` and request validation → 422, ``errors: [{path, message}]``

Any other :class:`~itsmflow.engine.errors.EngineError` maps to its ``status``. An unexpected exception is a
bug: it is logged with its traceback and answered with a bare 500 problem (see ``middleware``).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.errors import DeploymentInvalid, EngineError, ValidationFailed
from .rendering import JSONResponse

log = logging.getLogger("itsmflow.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ApiProblem(Exception):
    """An error raised by the HTTP layer itself (authentication, request shape...)."""

    def __init__(self, status: int, detail: str, *, title: str | None = None,
                 headers: dict[str, str] | None = None, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _phrase(status)
        self.headers = headers
        self.errors = errors


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(
    request: Request | None,
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _loc_path(loc: Iterable[Any]) -> str:
    """``("body", "variables", "x")`` → ``body.variables.x``; ``("query", "size")`` → ``query.size``."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "$"


async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
    errors: list[dict[str, Any]] | None = None
    if isinstance(exc, DeploymentInvalid):
        errors = [i.as_dict() for i in exc.issues]
    elif isinstance(exc, ValidationFailed):
        errors = [e.as_dict() for e in exc.errors]
    if exc.status >= 500:
        log.error("engine error answered with %s on %s %s: %s", exc.status, request.method, request.url.path,
                  exc.detail, exc_info=exc)
    return problem_response(request, exc.status, exc.detail, title=exc.title, errors=errors)


async def _api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
    return problem_response(request, exc.status, exc.detail, title=exc.title, errors=exc.errors, headers=exc.headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts on this path (Starlette's 405 only names the first route's)."""
    from starlette.routing import Match

    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such resource: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
        allowed = _allowed_methods(request)
        if allowed:
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    return problem_response(request, exc.status_code, detail, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    raw = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in raw):
        first = next(e for e in raw if e.get("type") == "json_invalid")
        reason = (first.get("ctx") or {}).get("error") or "malformed JSON"
        return problem_response(request, 400, f"the request body is not valid JSON: {reason}", title="Malformed JSON")
    errors = [{"path": _loc_path(e.get("loc", ())), "message": str(e.get("msg", "invalid"))} for e in raw]
    detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:10]) or "invalid request"
    return problem_response(request, 422, detail, title="Validation failed", errors=errors)


def install(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""
    app.add_exception_handler(EngineError, _engine_error)  # type: ignore[arg-type]
    app.add_exception_handler(ApiProblem, _api_problem)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_exception)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
