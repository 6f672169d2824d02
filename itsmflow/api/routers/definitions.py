"""Process definitions: list, latest by key, one version, its XML, the start form, start an instance."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status

from ..auth import PrincipalDep
from ..deps import EngineDep, set_total
from ..models import Definition, Form, Ident, Instance, StartRequest
from ..problems import ApiProblem
from ..responses import problems

router = APIRouter(prefix="/process-definitions", tags=["process definitions"])

KeyPath = Annotated[Ident, Path(description="process key (the BPMN process id)")]
IdPath = Annotated[Ident, Path(description="process definition id (one version)")]


@router.get("", response_model=list[Definition], summary="List process definitions",
            responses={**problems(401)})
def list_definitions(
    engine: EngineDep,
    _: PrincipalDep,
    response: Response,
    key: Annotated[Ident | None, Query(description="only this process key")] = None,
    latest_version: Annotated[bool, Query(alias="latestVersion", description="only the latest version per key")] = False,
) -> list[Definition]:
    items = engine.repository.definitions(key=key, latest_only=latest_version)
    set_total(response, len(items))
    return [Definition.model_validate(d.as_dict()) for d in items]


@router.get("/key/{key}", response_model=Definition, summary="Latest version of a process",
            responses=problems(401, 404))
def latest_definition(engine: EngineDep, _: PrincipalDep, key: KeyPath) -> Definition:
    return Definition.model_validate(engine.repository.latest(key).as_dict())


@router.get("/key/{key}/form", response_model=Form, response_model_exclude_none=True,
            summary="Start form of the latest version",
            description="`{schema, uiSchema?}`: the JSON Schema named by the start event's `formKey`; an empty "
                        "object schema when the start event has no form.",
            responses=problems(401, 404))
def start_form(engine: EngineDep, _: PrincipalDep, key: KeyPath) -> Form:
    return Form.model_validate(engine.forms.start_form(key))


@router.post("/key/{key}/start", response_model=Instance, status_code=status.HTTP_201_CREATED,
             summary="Start an instance of the latest version",
             responses=problems(400, 401, 404, 409, 422))
def start_instance(
    engine: EngineDep,
    principal: PrincipalDep,
    key: KeyPath,
    body: Annotated[StartRequest | None, Body()] = None,
) -> Instance:
    body = body or StartRequest()
    view = engine.runtime.start(key, business_key=body.business_key, variables=body.variables, principal=principal)
    return Instance.model_validate(view.as_dict())


@router.get("/{definition_id}", response_model=Definition, summary="One process definition version",
            responses=problems(401, 404))
def get_definition(engine: EngineDep, _: PrincipalDep, definition_id: IdPath) -> Definition:
    return Definition.model_validate(engine.repository.get(definition_id).as_dict())


@router.get("/{definition_id}/xml", summary="The uploaded file, byte-identical",
            response_class=Response,
            responses={200: {"content": {"application/xml": {"schema": {"type": "string"}}},
                             "description": "the file as uploaded"}, **problems(401, 404)})
def definition_xml(engine: EngineDep, _: PrincipalDep, definition_id: IdPath) -> Response:
    content = engine.repository.xml(definition_id)
    if content is None:  # pragma: no cover - the engine always stores the resource
        raise ApiProblem(404, f"process definition {definition_id} has no stored file")
    return Response(content=content, media_type="application/xml")
