"""Applied process packs: ``GET /api/packs``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..auth import PrincipalDep
from ..deps import EngineDep, set_total
from ..models import PackOut
from ..responses import problems

router = APIRouter(prefix="/packs", tags=["packs"])


@router.get("", response_model=list[PackOut], summary="Applied process packs",
            description="The current application of every pack (the latest per pack name and organisation) with "
                        "the definition versions it deployed and the organisation's tailoring applied "
                        "(`tailoring`, docs/tailoring.md).",
            responses=problems(401))
def list_packs(engine: EngineDep, _: PrincipalDep, response: Response) -> list[PackOut]:
    items = engine.packs.list()
    set_total(response, len(items))
    return [PackOut.model_validate(p.as_dict()) for p in items]
