"""Human tasks: inbox queries, one task, its form, claim / unclaim / delegate / complete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status

from ..auth import PrincipalDep
from ..deps import EngineDep, PageDep, set_total
from ..models import (
    CompleteRequest,
    Completion,
    ConsultationOut,
    ConsultationRequest,
    DelegateRequest,
    Ident,
    SignoffRequest,
    Task,
    TaskForm,
    TaskState,
)
from ..responses import problems

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
            description="`{schema, uiSchema?, data}`: the JSON Schema (draft 2020-12) named by the task's "
                        "`formKey`, its UI schema when the pack has one, and the current values of the form's "
                        "fields (while the task waits for sign-off: the submitted result). A task without a "
                        "form has an empty object schema and `data` holds every variable visible to the task.",
            responses=problems(401, 404))
def task_form(engine: EngineDep, _: PrincipalDep, task_id: TaskPath) -> TaskForm:
    return TaskForm.model_validate(engine.forms.task_form(task_id))


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
                         "tasks the caller may work on. The variables are checked against the task's form first "
                         "(422 with `errors: [{path, message}]`; unknown fields are refused); segregation-of-duties "
                         "rules give 403 naming the rule; missing required consultations give 409 "
                         "(`consultation pending: <roles>`). When the pack requires a sign-off, the result is "
                         "stored, `awaitingSignoff` is true and the task waits for the accountable role.",
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


@router.post("/{task_id}/signoff", response_model=Completion, summary="Sign off (or reject) a submitted result",
             description="For tasks whose RACI entry has `signoff: true`: once the responsible completed the task, "
                         "a holder of the accountable role approves the result (the task completes with it and the "
                         "process runs on) or rejects it with a `reason` (the task goes back to its submitter). "
                         "The submitter may not sign off their own result (403); segregation-of-duties rules apply.",
             responses=problems(400, 401, 403, 404, 409, 422))
def signoff(engine: EngineDep, principal: PrincipalDep, task_id: TaskPath, body: SignoffRequest) -> Completion:
    result = engine.tasks.signoff(task_id, principal, body.decision.value, body.reason)
    return Completion.model_validate(result.as_dict())


@router.get("/{task_id}/consultations", response_model=list[ConsultationOut],
            summary="Opinions recorded on the task by consulted roles", responses=problems(401, 404))
def list_consultations(engine: EngineDep, _: PrincipalDep, response: Response,
                       task_id: TaskPath) -> list[ConsultationOut]:
    items = engine.consultations.list(task_id)
    set_total(response, len(items))
    return [ConsultationOut.model_validate(c.as_dict()) for c in items]


@router.post("/{task_id}/consultations", response_model=list[ConsultationOut], status_code=status.HTTP_201_CREATED,
             summary="Record an opinion on the task (consulted roles)",
             description="The caller must hold one of the task's consulted roles (RACI `consulted`); one record is "
                         "made per consulted role the caller holds, or for `role` only. With `consultation: "
                         "required` the task cannot be completed before every consulted role has an opinion.",
             responses=problems(400, 401, 403, 404, 409, 422))
def add_consultation(engine: EngineDep, principal: PrincipalDep, task_id: TaskPath,
                     body: ConsultationRequest) -> list[ConsultationOut]:
    items = engine.consultations.record(task_id, principal, body.opinion, body.role)
    return [ConsultationOut.model_validate(c.as_dict()) for c in items]
