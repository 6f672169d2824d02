"""Open incidents (failures the engine could not get past): ``GET /api/incidents``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from ..auth import PrincipalDep
from ..deps import EngineDep, set_total
from ..models import Ident, IncidentOut, RetryRequest
from ..responses import problems

router = APIRouter(prefix="/incidents", tags=["incidents"])


@router.get("", response_model=list[IncidentOut], summary="Open incidents, oldest first", responses=problems(401))
def list_incidents(
    engine: EngineDep,
    _: PrincipalDep,
    response: Response,
    process_instance_id: Annotated[Ident | None, Query(alias="processInstanceId")] = None,
) -> list[IncidentOut]:
    items = engine.runtime.incidents(process_instance_id)
    set_total(response, len(items))
    return [IncidentOut.model_validate(i.as_dict()) for i in items]


@router.post("/{incident_id}/retry", status_code=204, response_class=Response,
             summary="Run the failed step again, optionally with corrected variables (admin)",
             responses=problems(401, 403, 404, 409, 422))
def retry_incident(engine: EngineDep, principal: PrincipalDep,
                   incident_id: Annotated[Ident, Path(description="incident id")],
                   body: RetryRequest | None = None) -> Response:
    engine.incidents.retry(incident_id, principal, body.variables if body else None)
    return Response(status_code=204)
