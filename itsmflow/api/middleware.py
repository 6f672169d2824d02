"""Request id + access log + last-resort error handling (a pure ASGI middleware).

- ``X-Request-Id``: honoured when the client sends a sane one (≤ 128 characters of
  ``[A-Za-z0-9._:-]``), generated otherwise; always returned on the response.
- One log line per request: method, path, status, duration, user, request id.
- An exception that escaped every handler is a bug: it is logged with its traceback and the
  client gets a 500 problem carrying the request id (never a stack trace).
- Requests whose declared ``Content-Length`` exceeds the limit are refused with 413.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("itsmflow.api.access")
REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _problem_bytes(status: int, title: str, detail: str, path: str, request_id: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail,
                       "instance": path, "requestId": request_id}).encode()


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _SANE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status: dict[str, Any] = {"code": None}
        path = scope.get("path", "")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [h for h in message["headers"] if h[0].lower() != b"x-request-id"]
                message["headers"].append((b"x-request-id", request_id.encode()))
            await send(message)

        async def reply(code: int, title: str, detail: str) -> None:
            await send_with_id({"type": "http.response.start", "status": code, "headers": [
                (b"content-type", b"application/problem+json")]})
            await send({"type": "http.response.body", "body": _problem_bytes(code, title, detail, path, request_id)})

        try:
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await reply(413, "Content Too Large",
                            f"request bodies are limited to {self.max_body_bytes} bytes")
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - last resort: a bug, logged with its traceback
            log.exception("unhandled error on %s %s (request id %s)", scope.get("method"), path, request_id)
            if status["code"] is None:
                await reply(500, "Internal Server Error",
                            f"an unexpected error occurred; quote request id {request_id} to the operator")
            status["code"] = status["code"] or 500
        finally:
            user = (scope.get("state") or {}).get("user_id", "-")
            log.info("%s %s %s %.1fms user=%s rid=%s", scope.get("method"), path, status["code"],
                     (time.perf_counter() - started) * 1000, user, request_id)
