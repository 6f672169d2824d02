"""Bearer-token authentication against the directory file.

``Authorization: Bearer <token>`` → the directory user holding that token → a
:class:`~itsmflow.engine.identity.Principal`. A missing or unknown token is a 401 problem with
``WWW-Authenticate: Bearer``. Authorization (who may do what) is the engine's business.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..engine.errors import Forbidden
from ..engine.identity import Principal
from .deps import EngineDep
from .problems import ApiProblem

bearer = HTTPBearer(auto_error=False, description="a token from the directory file")

MAX_TOKEN_LENGTH = 4096


def _unauthorized(detail: str, error: str | None = None) -> ApiProblem:
    challenge = 'Bearer realm="itsmflow"' + (f', error="{error}"' if error else "")
    return ApiProblem(401, detail, title="Unauthorized", headers={"WWW-Authenticate": challenge})


def get_principal(
    request: Request,
    engine: EngineDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise _unauthorized("authentication required: send 'Authorization: Bearer <token>'")
    token = credentials.credentials
    user = engine.directory.authenticate(token) if len(token) <= MAX_TOKEN_LENGTH else None
    if user is None:
        raise _unauthorized("the bearer token is not valid", "invalid_token")
    request.state.user_id = user.id
    return user.principal()


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: Principal, what: str) -> None:
    """For the few operations the engine does not guard itself (deployments)."""
    if not principal.is_admin:
        raise Forbidden(f"only users with the admin role may {what}")
