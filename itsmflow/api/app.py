"""The FastAPI application: ``create_app(engine)``.

No globals: the engine lives in ``app.state.engine`` and routes get it through a dependency,
so several apps (over several engines) can live in one process, e.g. in tests.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..engine.core import Engine
from . import problems
from .deps import TOTAL_HEADER
from .middleware import RequestContextMiddleware
from .rendering import JSONResponse
from .routers import (
    definitions,
    deployments,
    incidents,
    instances,
    messages,
    notifications,
    packs,
    schedule,
    system,
    tasks,
)

API_PREFIX = "/api"

DESCRIPTION = """\
HTTP API of itsmflow, a durable BPMN engine.

* **Auth**: `Authorization: Bearer <token>` with a token from the directory file (everything except
  `/api/health`, `/openapi.json` and `/docs`).
* **Errors**: `application/problem+json` with `title`, `status`, `detail` (and `errors` for
  located problems).
* **Pagination**: `page` (1-based) and `size` (1..500, default 50); the total is in `X-Total-Count`.
"""


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(
        title="itsmflow",
        version=_version(),
        description=DESCRIPTION,
        default_response_class=JSONResponse,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        generate_unique_id_function=lambda route: route.name,  # operationId = the function name
    )
    app.state.engine = engine
    problems.install(app)
    for module in (system, deployments, definitions, instances, tasks, incidents, messages, notifications, packs,
                   schedule):
        app.include_router(module.router, prefix=API_PREFIX)
    max_body = max(32 * 1024 * 1024, 4 * engine.settings.max_bpmn_bytes, 4 * engine.settings.max_variables_bytes)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=max_body)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with every error response documented as ``application/problem+json``."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses", {})
            if "requestBody" in operation:  # any body may be malformed or too large
                responses.setdefault("400", {"description": "Malformed request body"})
                responses.setdefault("413", {"description": "Request body too large"})
            for code, resp in responses.items():
                if code.isdigit() and int(code) >= 400:
                    resp["content"] = {problems.PROBLEM_MEDIA_TYPE: {"schema": problem_ref}}
                    if code == "422":
                        resp["description"] = "Validation failed (`errors: [{path, message}]`)"
            if operation.get("security"):
                responses.setdefault("401", {"description": "Missing or invalid bearer token",
                                             "content": {problems.PROBLEM_MEDIA_TYPE: {"schema": problem_ref}}})
            ok = responses.get("200", {})
            if ok.get("content", {}).get("application/json", {}).get("schema", {}).get("type") == "array":
                ok["headers"] = {TOTAL_HEADER: {"description": "number of matching items (all pages)",
                                                "schema": {"type": "integer", "minimum": 0}}}
    components = schema.get("components", {}).get("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    upload = components.pop("Body_deploy", None)
    if upload is not None:  # FastAPI's generated name for the multipart body
        upload["title"] = "DeploymentUpload"
        upload["properties"]["files"]["minItems"] = 1
        components["DeploymentUpload"] = upload
        body = schema["paths"]["/api/deployments"]["post"]["requestBody"]["content"]["multipart/form-data"]
        body["schema"] = {"$ref": "#/components/schemas/DeploymentUpload"}
    app.openapi_schema = schema
    return schema


def _version() -> str:
    try:
        return metadata.version("itsmflow")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"
