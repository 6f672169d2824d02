"""Process instances: list, get, suspend, activate, terminate, history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from ..auth import PrincipalDep
from ..deps import EngineDep, PageDep, set_total
from ..models import HistoryEvent, Ident, Instance, InstanceState, TerminateRequest
from ..responses import problems

router = APIRouter(prefix="/process-instances", tags=["process instances"])

InstancePath = Annotated[Ident, Path(description="process instance id")]


@router.get("", response_model=list[Instance], summary="List process instances (newest first)",
            description="Paginated with `page`/`size`; the total number of matches is in `X-Total-Count`.",
            responses=problems(401))
def list_instances(
    engine: EngineDep,
    _: PrincipalDep,
    response: Response,
    paging: PageDep,
    business_key: Annotated[Ident | None, Query(alias="businessKey")] = None,
    definition_key: Annotated[Ident | None, Query(alias="definitionKey")] = None,
    state: Annotated[InstanceState | None, Query()] = None,
) -> list[Instance]:
    items, total = engine.runtime.list(
        business_key=business_key, definition_key=definition_key, state=state.value if state else None,
        page=paging.page, size=paging.size,
    )
    set_total(response, total)
    return [Instance.model_validate(v.as_dict()) for v in items]


@router.get("/{instance_id}", response_model=Instance, summary="One process instance",
            responses=problems(401, 404))
def get_instance(engine: EngineDep, _: PrincipalDep, instance_id: InstancePath) -> Instance:
    return Instance.model_validate(engine.runtime.get(instance_id).as_dict())


@router.post("/{instance_id}/suspend", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             summary="Suspend an active instance (admin)", responses=problems(401, 403, 404, 409))
def suspend(engine: EngineDep, principal: PrincipalDep, instance_id: InstancePath) -> Response:
    engine.runtime.suspend(instance_id, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{instance_id}/activate", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             summary="Activate a suspended instance (admin)", responses=problems(401, 403, 404, 409))
def activate(engine: EngineDep, principal: PrincipalDep, instance_id: InstancePath) -> Response:
    engine.runtime.activate(instance_id, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{instance_id}/terminate", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             summary="Terminate a running instance with a reason (admin)",
             responses=problems(400, 401, 403, 404, 409))
def terminate(engine: EngineDep, principal: PrincipalDep, instance_id: InstancePath,
              body: TerminateRequest) -> Response:
    engine.runtime.terminate(instance_id, principal, body.reason)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{instance_id}/history", response_model=list[HistoryEvent],
            summary="The instance's audit trail, oldest first (hash-chained)",
            responses=problems(401, 404))
def history(engine: EngineDep, _: PrincipalDep, response: Response, instance_id: InstancePath) -> list[HistoryEvent]:
    events = engine.history.events(instance_id)
    set_total(response, len(events))
    return [HistoryEvent.model_validate(e.as_dict()) for e in events]
