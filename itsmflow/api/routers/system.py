"""Health and identity: ``GET /api/health`` (no token) and ``GET /api/me``."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError

from ..auth import PrincipalDep
from ..deps import EngineDep
from ..models import Health, Me
from ..problems import ApiProblem
from ..responses import problems

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health, summary="Liveness and database reachability (no token needed)",
            responses=problems(503))
def health(engine: EngineDep) -> Health:
    try:
        engine.ping()
    except SQLAlchemyError as exc:
        raise ApiProblem(503, f"the database is not reachable: {type(exc).__name__}") from exc
    return Health(status="ok", db=engine.db_kind)


@router.get("/me", response_model=Me, summary="Who the bearer token belongs to", responses=problems(401))
def me(principal: PrincipalDep) -> Me:
    return Me(user_id=principal.user_id, name=principal.name or principal.user_id, roles=sorted(principal.roles))
