"""The HTTP API (FastAPI) over :class:`itsmflow.engine.core.Engine`; see docs/api.md.

- ``app``: :func:`create_app` — routers, problem handlers, middleware, OpenAPI
- ``auth``: bearer token → principal; ``deps``: engine and pagination dependencies
- ``models``: request/response bodies; ``problems``: errors as problem+json
- ``routers/``: one module per resource
"""
