"""Human tasks: inbox queries, one task, its form, claim / unclaim / delegate / complete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status

from ..auth import PrincipalDep
from ..deps import EngineDep, PageDep, set_total
from ..models import CompleteRequest, Completion, DelegateRequest, Ident, Task, TaskForm, TaskState
from ..responses import problems
from .definitions import EMPTY_FORM_SCHEMA

router = APIRouter(prefix="/tasks", tags=["tasks"])

TaskPath = Annotated[Ident, Path(description="task id")]


@router.get(
    "",
    response_model=list[Task],
    summary="Query tasks (the inbox)",
    description=(
        "All filters combine with AND. `candidateUser=u` lists tasks `u` may pick up or is working on: "
        "`u` is a candidate user or holds a candidate role, and the task is unassigned or assigned to `u`. "
        "`state` defaults to `open`. Ordered by creation time; paginated with `page`/`size`, the total "
        "number of matches is in `X-Total-Count`."
    ),
    responses=problems(401),
)
def list_tasks(
    engine: EngineDep,
    _: PrincipalDep,
    response: Response,
    paging: PageDep,
    assignee: Annotated[Ident | None, Query()] = None,
    candidate_user: Annotated[Ident | None, Query(alias="candidateUser")] = None,
    candidate_role: Annotated[Ident | None, Query(alias="candidateRole")] = None,
    business_key: Annotated[Ident | None, Query(alias="businessKey")] = None,
    definition_key: Annotated[Ident | None, Query(alias="definitionKey")] = None,
    task_definition_key: Annotated[Ident | None, Query(alias="taskDefinitionKey")] = None,
    process_instance_id: Annotated[Ident | None, Query(alias="processInstanceId")] = None,
    state: Annotated[TaskState, Query()] = TaskState.open,
) -> list[Task]:
    items, total = engine.tasks.query(
        assignee=assignee, candidate_user=candidate_user, candidate_role=candidate_role, business_key=business_key,
        definition_key=definition_key, task_definition_key=task_definition_key,
        process_instance_id=process_instance_id, state=state.value, page=paging.page, size=paging.size,
    )
    set_total(response, total)
    return [Task.model_validate(t.as_dict()) for t in items]


@router.get("/{task_id}", response_model=Task, summary="One task", responses=problems(401, 404))
def get_task(engine: EngineDep, _: PrincipalDep, task_id: TaskPath) -> Task:
    return Task.model_validate(engine.tasks.get(task_id).as_dict())


@router.get("/{task_id}/form", response_model=TaskForm, response_model_exclude_none=True,
            summary="The task's form and current data",
            description="`{schema, uiSchema?, data}`. Forms are not wired yet: the schema is always an empty "
                        "object schema for now; `data` holds the values visible to the task.",
            responses=problems(401, 404))
def task_form(engine: EngineDep, _: PrincipalDep, task_id: TaskPath) -> TaskForm:
    return TaskForm(form_schema=dict(EMPTY_FORM_SCHEMA), data=engine.tasks.variables(task_id))


@router.post("/{task_id}/claim", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             summary="Become the assignee", responses=problems(401, 403, 404, 409))
def claim(engine: EngineDep, principal: PrincipalDep, task_id: TaskPath) -> Response:
    engine.tasks.claim(task_id, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{task_id}/unclaim", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             summary="Give the task back to its candidates", responses=problems(401, 403, 404, 409))
def unclaim(engine: EngineDep, principal: PrincipalDep, task_id: TaskPath) -> Response:
    engine.tasks.unclaim(task_id, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{task_id}/delegate", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             summary="Hand the task to another user (the delegator stays accountable owner)",
             responses=problems(401, 403, 404, 409))
def delegate(engine: EngineDep, principal: PrincipalDep, task_id: TaskPath, body: DelegateRequest) -> Response:
    engine.tasks.delegate(task_id, body.user_id, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{task_id}/complete", response_model=Completion, summary="Complete the task with variables",
             description="Runs the process on to its next wait states. `nextTasks` are the instance's open "
                         "tasks the caller may work on.",
             responses=problems(400, 401, 403, 404, 409, 422))
def complete(
    engine: EngineDep,
    principal: PrincipalDep,
    task_id: TaskPath,
    body: Annotated[CompleteRequest | None, Body()] = None,
) -> Completion:
    body = body or CompleteRequest()
    result = engine.tasks.complete(task_id, principal, body.variables)
    return Completion.model_validate(result.as_dict())
