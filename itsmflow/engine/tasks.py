"""Task service: human tasks — inbox queries, claim, unclaim, delegate and **complete**.

Authorization lives here, not in the HTTP layer: a user may work on a task only when they are
its assignee (or the owner who delegated it), a candidate user, or hold one of its candidate
roles. Inbox queries read the ``human_task`` / ``task_candidate`` tables only; they never load
an instance.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import any_, bindparam, delete, func, literal_column, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from .directory import Directory
from .clock import as_utc, iso
from .errors import Conflict, FieldIssue, Forbidden, InvalidRequest, NotFound, ValidationFailed
from .textcheck import check_text, valid_id
from .execution import Execution, Executor, from_storable, to_storable
from .multiinstance import collect_instance_result
from .identity import Principal
from .runtime import IncidentView, InstanceView, RuntimeService
from .storage.models import HumanTask, ProcessInstance, TaskCandidate
from .variables import check_variables, to_json_compatible

TASK_STATES = ("open", "completed", "cancelled")
_REPLY_TASKS = 500  # open tasks listed in a completion reply (before filtering by who may work on them)
_HT = HumanTask.__table__
_SELECT_TASK = select(_HT).where(_HT.c.id == bindparam("tid"))


@dataclass
class TaskView:
    id: str
    name: str | None
    task_definition_key: str
    process_instance_id: str
    business_key: str | None
    definition_key: str
    definition_id: str
    lane: str | None
    candidate_roles: list[str]
    candidate_users: list[str]
    assignee: str | None
    owner: str | None
    state: str
    created_at: datetime
    due: datetime | None
    form_key: str | None
    completed_at: datetime | None
    completed_by: str | None
    phase: str = "work"  # work | signoff (the result waits for the accountable role's sign-off)
    submitted_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "taskDefinitionKey": self.task_definition_key,
            "processInstanceId": self.process_instance_id,
            "businessKey": self.business_key,
            "definitionKey": self.definition_key,
            "definitionId": self.definition_id,
            "lane": self.lane,
            "candidateRoles": self.candidate_roles,
            "candidateUsers": self.candidate_users,
            "assignee": self.assignee,
            "owner": self.owner,
            "state": self.state,
            "createdAt": iso(self.created_at),
            "due": iso(self.due),
            "formKey": self.form_key,
            "completedAt": iso(self.completed_at),
            "completedBy": self.completed_by,
            "phase": self.phase,
            "submittedBy": self.submitted_by,
        }


_QUERY_CACHE: dict[tuple[tuple[bool, ...], bool], tuple[Any, Any, Any]] = {}


def _task_ids_in(ids: Any, pg: bool) -> Any:
    """Restrict the task rows to a (small) set of candidate task ids.

    PostgreSQL: ``id = ANY(<array of the ids>)`` — the ids are collected first (an init plan over the
    candidate index) and the task rows fetched by primary key. A join lets the planner hash-join
    against a sequential scan of every open task (measured: 5 ms at 10k open tasks, growing with
    them), because it cannot know that the candidate set is small."""
    if pg:
        return _HT.c.id == any_(func.coalesce(select(func.array_agg(ids.c.task_id)).scalar_subquery(),
                                              literal_column("'{}'::varchar[]")))
    return _HT.c.id.in_(select(ids.c.task_id))


def _query_statements(shape: tuple[bool, ...], pg: bool) -> tuple[Any, Any, Any]:
    """The inbox query for one combination of filters, built once with bound parameters
    (filtered, the page, the page with the total) so SQLAlchemy reuses its compiled form."""
    found = _QUERY_CACHE.get((shape, pg))
    if found is not None:
        return found
    (has_assignee, has_role, has_user, has_roles, has_bk, has_dk, has_tdk, has_instance) = shape
    q = select(_HT).where(_HT.c.state == bindparam("state"))
    if has_assignee:
        q = q.where(_HT.c.assignee == bindparam("assignee"))
    # Candidate filters drive the query from the candidate index (kind, value, task_id):
    # only the tasks of those roles/users are visited, however many other tasks are open.
    # Candidate rows exist for open tasks only.
    if has_role:
        by_role = select(TaskCandidate.task_id.label("task_id")).where(
            TaskCandidate.kind == "role", TaskCandidate.value == bindparam("candidate_role")).subquery("role_ids")
        q = q.where(_task_ids_in(by_role, pg))
    if has_user:
        by_user = select(TaskCandidate.task_id.label("task_id")).where(
            TaskCandidate.kind == "user", TaskCandidate.value == bindparam("candidate_user"))
        wanted = by_user.union(select(TaskCandidate.task_id).where(
            TaskCandidate.kind == "role", TaskCandidate.value.in_(bindparam("roles", expanding=True)))) \
            if has_roles else by_user
        ids = wanted.subquery("candidate_ids")
        # from the (small) set of the user's candidate task ids to the task rows by primary key
        q = q.where(_task_ids_in(ids, pg)).where(
            or_(_HT.c.assignee.is_(None), _HT.c.assignee == bindparam("candidate_user")))
    if has_bk:
        q = q.where(_HT.c.business_key == bindparam("business_key"))
    if has_dk:
        q = q.where(_HT.c.definition_key == bindparam("definition_key"))
    if has_tdk:
        q = q.where(_HT.c.task_definition_key == bindparam("task_definition_key"))
    if has_instance:
        q = q.where(_HT.c.instance_id == bindparam("instance_id"))
    page_q = q.order_by(_HT.c.created_at, _HT.c.id).offset(bindparam("offset")).limit(bindparam("limit"))
    counted = page_q.add_columns(func.count().over().label("_total"))
    found = _QUERY_CACHE[(shape, pg)] = (q, page_q, counted)
    return found


def task_view(row: HumanTask) -> TaskView:
    return TaskView(
        id=row.id,
        name=row.name,
        task_definition_key=row.task_definition_key,
        process_instance_id=row.instance_id,
        business_key=row.business_key,
        definition_key=row.definition_key,
        definition_id=row.definition_id,
        lane=row.lane,
        candidate_roles=json.loads(row.candidate_roles_json),
        candidate_users=json.loads(row.candidate_users_json),
        assignee=row.assignee,
        owner=row.owner,
        state=row.state,
        created_at=row.created_at,
        due=row.due,
        form_key=row.form_key,
        completed_at=row.completed_at,
        completed_by=row.completed_by,
        phase=row.phase or "work",
        submitted_by=row.submitted_by,
    )


def is_candidate(task: TaskView, principal: Principal) -> bool:
    return principal.user_id in task.candidate_users or bool(principal.roles & set(task.candidate_roles))


def may_work_on(task: TaskView, principal: Principal) -> bool:
    """Assignee, delegating owner, candidate user, or holder of a candidate role."""
    return principal.user_id in (task.assignee, task.owner) or is_candidate(task, principal)


@dataclass
class CompletionResult:
    process_instance: InstanceView
    next_tasks: list[TaskView]
    awaiting_signoff: bool = False  # the result was submitted and waits for the accountable's sign-off

    def as_dict(self) -> dict[str, Any]:
        return {
            "processInstance": self.process_instance.as_dict(),
            "nextTasks": [t.as_dict() for t in self.next_tasks],
            "awaitingSignoff": self.awaiting_signoff,
        }


# A hook run inside the completion transaction before the task is completed; it may refuse (raise)
# or return the (possibly filtered) variables: forms, consultation, reserved variables plug in here.
CompletionCheck = Callable[[Execution, TaskView, Principal, dict[str, Any]], dict[str, Any]]
# May ``user_id`` act on the task (claim it, receive it by delegation, complete it, sign it off)?
# Raises Forbidden otherwise; run inside the command's transaction (segregation of duties).
ActorCheck = Callable[[Execution, TaskView, str], None]
# Run in the transaction that completes a task, after it completed (notifications).
CompletionListener = Callable[[Execution, TaskView, str], None]
# The role that must sign off a task's result, or None (RACI accountable with signoff: true).
SignoffRole = Callable[[Execution | None, str, str], str | None]
SIGNOFF_DECISIONS = ("approved", "rejected")


class TaskService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        executor: Executor,
        runtime: RuntimeService,
        directory: Directory,
        *,
        max_variables_bytes: int,
    ) -> None:
        self._sessions = sessions
        bind = sessions.kw.get("bind")
        self._pg = getattr(getattr(bind, "dialect", None), "name", None) == "postgresql"
        self._executor = executor
        self._runtime = runtime
        self.directory = directory
        self._max_variables_bytes = max_variables_bytes
        self.completion_checks: list[CompletionCheck] = []
        self.actor_checks: list[ActorCheck] = []
        self.completion_listeners: list[CompletionListener] = []
        self.signoff_role: SignoffRole | None = None
        # run when a sign-off is rejected: (execution, task, submitter, reason)
        self.signoff_rejected_listeners: list[Callable[[Execution, TaskView, str | None, str], None]] = []

    # -- queries --------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskView:
        row = None
        if valid_id(task_id):
            with self._sessions() as session:
                row = session.connection().execute(_SELECT_TASK, {"tid": task_id}).first()
        if row is None:
            raise NotFound(f"task {task_id!r} does not exist")
        return task_view(row)

    def query(
        self,
        *,
        assignee: str | None = None,
        candidate_user: str | None = None,
        candidate_role: str | None = None,
        business_key: str | None = None,
        definition_key: str | None = None,
        task_definition_key: str | None = None,
        process_instance_id: str | None = None,
        state: str = "open",
        page: int = 1,
        size: int = 50,
        with_total: bool = True,
    ) -> tuple[list[TaskView], int]:
        """Inbox query on the task table (indexed; no instance is loaded)."""
        if state not in TASK_STATES:
            raise InvalidRequest(f"state must be one of {', '.join(TASK_STATES)}")
        filters = (assignee, candidate_user, candidate_role, business_key, definition_key, task_definition_key,
                   process_instance_id)
        if any(f is not None and not valid_id(f) for f in filters):
            return [], 0
        roles: list[str] = []
        if candidate_user is not None:
            user = self.directory.get(candidate_user)
            roles = sorted(user.roles) if user else []
        shape = (assignee is not None, candidate_role is not None, candidate_user is not None, bool(roles),
                 business_key is not None, definition_key is not None, task_definition_key is not None,
                 process_instance_id is not None)
        q, page_q, counted = _query_statements(shape, self._pg)
        params = {"state": state, "assignee": assignee, "candidate_role": candidate_role,
                  "candidate_user": candidate_user, "roles": roles, "business_key": business_key,
                  "definition_key": definition_key, "task_definition_key": task_definition_key,
                  "instance_id": process_instance_id, "offset": (page - 1) * size, "limit": size}
        with self._sessions() as session:
            conn = session.connection()
            if not with_total:
                rows = conn.execute(page_q, params).all()
                return [task_view(r) for r in rows], len(rows)
            # the total comes with the page (a window count over the same matches): one statement
            rows = conn.execute(counted, params).all()
            if rows:
                total = rows[0]._total
            elif page == 1:
                total = 0
            else:  # a page past the end: count separately
                total = conn.execute(select(func.count()).select_from(q.subquery()), params).scalar() or 0
            return [task_view(r) for r in rows], total

    def variables(self, task_id: str) -> dict[str, Any]:
        """Current data visible to a task (for forms): the task's own data in its instance."""
        task = self.get(task_id)
        _, _, workflow = self._executor.load_workflow(task.process_instance_id)
        try:
            spiff_task = workflow.get_task_from_id(uuid.UUID(task_id))
        except Exception:  # noqa: BLE001 - gone from the snapshot: show the instance variables
            spiff_task = None
        data = dict(spiff_task.data) if spiff_task is not None else dict(self._runtime.get(task.process_instance_id).variables)
        data.pop("data_objects", None)
        return to_json_compatible(data)

    # -- commands -------------------------------------------------------------------------
    def claim(self, task_id: str, principal: Principal) -> None:
        task = self._open_task(task_id)
        if not may_work_on(task, principal):
            raise Forbidden(self._role_message(task, principal))
        if task.assignee == principal.user_id:
            return
        if task.assignee is not None:
            raise Conflict(f"task {task_id} is already assigned to {task.assignee}")
        self._change_assignment(task, principal, "task_claimed", {"assignee": principal.user_id},
                                expect_assignee=None, values={"assignee": principal.user_id},
                                check_user=principal.user_id)

    def unclaim(self, task_id: str, principal: Principal) -> None:
        task = self._open_task(task_id)
        if not may_work_on(task, principal):
            raise Forbidden(self._role_message(task, principal))
        if task.assignee is None:
            raise Conflict(f"task {task_id} is not assigned")
        if task.assignee != principal.user_id and task.owner != principal.user_id and not principal.is_admin:
            raise Conflict(f"task {task_id} is assigned to {task.assignee}; only they can unclaim it")
        self._change_assignment(task, principal, "task_unclaimed", {"previousAssignee": task.assignee},
                                expect_assignee=task.assignee, values={"assignee": None, "owner": None})

    def delegate(self, task_id: str, user_id: str, principal: Principal) -> None:
        """Hand the work to ``user_id``; the delegating assignee stays the accountable owner."""
        task = self._open_task(task_id)
        if not may_work_on(task, principal):
            raise Forbidden(self._role_message(task, principal))
        if task.assignee not in (None, principal.user_id) and task.owner != principal.user_id:
            raise Conflict(f"task {task_id} is assigned to {task.assignee}; only they can delegate it")
        if not valid_id(user_id) or self.directory.get(user_id) is None:
            raise NotFound(f"user {user_id!r} is not in the directory")
        owner = task.owner or principal.user_id
        self._change_assignment(
            task, principal, "task_delegated", {"owner": owner, "delegate": user_id, "previousAssignee": task.assignee},
            expect_assignee=task.assignee, values={"assignee": user_id, "owner": owner}, check_user=user_id,
        )

    def complete(self, task_id: str, principal: Principal, variables: dict[str, Any] | None = None) -> CompletionResult:
        """Complete a user task with the submitted variables and run the process on.

        Inside one transaction, before anything changes: the actor checks (segregation of duties), the
        completion checks (consultations, the form, reserved variables). When the task's result needs a
        sign-off, it is stored and the task waits for the accountable role (:meth:`signoff`).
        """
        if not valid_id(task_id):
            raise NotFound(f"task {task_id!r} does not exist")
        outcome: dict[str, bool] = {}

        def command(ex: Execution) -> None:
            # the task row is read in the command's transaction (no separate read before it)
            row = ex.open_task(task_id)
            if row is None:
                state = ex.session.connection().execute(_SELECT_TASK, {"tid": task_id}).first()
                if state is None:
                    raise NotFound(f"task {task_id!r} does not exist")
                raise Conflict(f"task {task_id} is {state.state}")
            task = task_view(row)
            if not may_work_on(task, principal):
                raise Forbidden(self._role_message(task, principal))
            if task.phase == "signoff":
                raise Conflict(f"task {task_id} waits for sign-off by {', '.join(task.candidate_roles)}: "
                               f"use POST /api/tasks/{task_id}/signoff")
            if task.assignee is not None and principal.user_id not in (task.assignee, task.owner):
                raise Conflict(f"task {task_id} is assigned to {task.assignee}")
            submitted = check_variables(variables or {}, max_bytes=self._max_variables_bytes)
            if ex.row.state != "active":
                raise Conflict(f"process instance {ex.instance_id} is {ex.row.state}; tasks cannot be completed")
            spiff_task = ex.ready_task(task_id)
            for check in self.actor_checks:
                check(ex, task, principal.user_id)
            values = submitted
            for completion_check in self.completion_checks:
                values = completion_check(ex, task, principal, values)
            accountable = self.signoff_role(ex, task.definition_id, task.task_definition_key) \
                if self.signoff_role else None
            if accountable:
                self._submit_for_signoff(ex, task, principal, values, accountable)
                outcome["signoff"] = True
                return
            self._finish(ex, task, spiff_task, values, completed_by=principal.user_id, actor=principal.user_id)

        done: list[Execution] = []
        self._executor.run_for_task(task_id, principal.user_id, command, want=done)
        if outcome.get("signoff") or not done or done[0].persisted is None or done[0].changed_after_commit:
            # the command changed task rows itself (sign-off), or a message delivered after the commit
            # moved the instance on: read the result back
            instance_id = done[0].instance_id if done else self.get(task_id).process_instance_id
            instance = self._runtime.get(instance_id)
            open_tasks, _ = self.query(process_instance_id=instance_id, size=_REPLY_TASKS, with_total=False)
        else:  # the reply is what the command wrote, no re-read
            instance, open_tasks = self._written(done[0])
        return CompletionResult(instance, [t for t in open_tasks if may_work_on(t, principal)],
                                awaiting_signoff=outcome.get("signoff", False))

    def _written(self, ex: Execution) -> tuple[InstanceView, list[TaskView]]:
        """The instance and its open tasks as the command wrote them (read-your-writes without a read)."""
        p, row = ex.persisted, ex.row
        values = p.values
        instance = InstanceView(
            id=row.id, definition_id=row.definition_id, definition_key=row.definition_key,
            version=row.definition_version, business_key=row.business_key, state=values["state"],
            variables=json.loads(values["variables_json"]), active_activities=p.activities,
            started_at=row.started_at, ended_at=values.get("ended_at", row.ended_at), started_by=row.started_by,
            end_reason=values.get("end_reason", row.end_reason),
            incidents=[IncidentView(i.id, i.instance_id, i.activity_id, i.message, i.created_at, i.state)
                       for i in p.incidents],
        )
        # as the query the reply used to make: the first 500 open tasks by (created, id)
        rows = sorted(p.open_tasks, key=lambda r: (as_utc(r.created_at), r.id))[:_REPLY_TASKS]
        return instance, [task_view(r) for r in rows]

    def signoff(self, task_id: str, principal: Principal, decision: str, reason: str | None = None) -> CompletionResult:
        """The accountable role's decision on a submitted result: ``approved`` completes the task with
        the submitted variables; ``rejected`` (a reason is required) sends it back to its submitter."""
        if decision not in SIGNOFF_DECISIONS:
            raise ValidationFailed("decision must be 'approved' or 'rejected'",
                                   [FieldIssue("$.decision", "must be one of: approved, rejected")])
        check_text(reason, "reason", 4000)
        if decision == "rejected" and not (reason or "").strip():
            raise ValidationFailed("a reason is required when the sign-off is rejected",
                                   [FieldIssue("$.reason", "is required when decision is rejected")])
        task = self._open_task(task_id)
        if task.phase != "signoff":
            raise Conflict(f"task {task_id} has no result waiting for sign-off")
        if not may_work_on(task, principal):
            raise Forbidden(self._role_message(task, principal))
        if task.assignee is not None and principal.user_id not in (task.assignee, task.owner):
            raise Conflict(f"task {task_id} is assigned to {task.assignee}")
        if principal.user_id == task.submitted_by:
            raise Forbidden(f"four-eyes rule: {principal.user_id} submitted the result of task {task_id} and "
                            "may not sign it off")

        def command(ex: Execution) -> None:
            if ex.row.state != "active":
                raise Conflict(f"process instance {ex.instance_id} is {ex.row.state}; tasks cannot be signed off")
            spiff_task = ex.ready_task(task_id)
            row = self._require_phase(ex, task_id, "signoff")
            for check in self.actor_checks:
                check(ex, task, principal.user_id)
            pending = json.loads(row.pending_json or "{}")
            if row.submitted_by == principal.user_id:  # re-checked on the fresh row
                raise Forbidden(f"four-eyes rule: {principal.user_id} submitted the result of task {task_id} and "
                                "may not sign it off")
            if decision == "approved":
                ex.audit.append("task_signed_off", actor=principal.user_id, activity_id=task.task_definition_key,
                                task_id=task_id, data={"decision": decision, "reason": reason,
                                                       "submittedBy": row.submitted_by})
                values = from_storable(pending.get("variables") or {})
                self._finish(ex, task, spiff_task, values, completed_by=row.submitted_by or principal.user_id,
                             actor=principal.user_id, signed_off_by=principal.user_id)
                ex.session.execute(update(HumanTask).where(HumanTask.id == task_id).values(pending_json=None))
                return
            back = pending.get("restore") or {}
            submitter = row.submitted_by
            res = ex.session.execute(
                update(HumanTask).where(HumanTask.id == task_id, HumanTask.state == "open", HumanTask.phase == "signoff")
                .values(phase="work", pending_json=None, submitted_by=None,
                        candidate_roles_json=json.dumps(back.get("roles") or []),
                        candidate_users_json=json.dumps(back.get("users") or []),
                        assignee=submitter, owner=back.get("owner"))
            )
            if res.rowcount != 1:
                raise Conflict(f"task {task_id} was changed concurrently")
            self._replace_candidates(ex, task_id, back.get("roles") or [], back.get("users") or [])
            ex.audit.append("task_signoff_rejected", actor=principal.user_id, activity_id=task.task_definition_key,
                            task_id=task_id, data={"decision": decision, "reason": reason,
                                                   "submittedBy": submitter, "assignee": submitter})
            for listener in self.signoff_rejected_listeners:
                listener(ex, task, submitter, reason or "")

        self._executor.run(task.process_instance_id, principal.user_id, command)
        instance = self._runtime.get(task.process_instance_id)
        open_tasks, _ = self.query(process_instance_id=task.process_instance_id, size=500, with_total=False)
        return CompletionResult(instance, [t for t in open_tasks if may_work_on(t, principal)])

    def pending_variables(self, task_id: str) -> dict[str, Any] | None:
        """The result waiting for sign-off (None when the task is not in the sign-off phase)."""
        with self._sessions() as session:
            row = session.get(HumanTask, task_id) if valid_id(task_id) else None
            if row is None or row.phase != "signoff" or not row.pending_json:
                return None
            return to_json_compatible(from_storable(json.loads(row.pending_json).get("variables") or {}))

    # -- completion internals ---------------------------------------------------------------
    def _finish(self, ex: Execution, task: TaskView, spiff_task: Any, values: dict[str, Any], *,
                completed_by: str, actor: str, signed_off_by: str | None = None) -> None:
        before = {k: spiff_task.data.get(k) for k in values}
        spiff_task.data.update(values)
        collect_instance_result(ex.definition, spiff_task, values, completed_by)
        spiff_task.run()
        ex.completed_task_ids.add(task.id)
        ex.completed_by = completed_by
        data: dict[str, Any] = {
            "name": task.name,
            "assignee": task.assignee,
            "owner": task.owner,
            # what was submitted (a decision repeated on a loop-back is still a decision) …
            "submitted": to_json_compatible(values),
            # … and which instance variables it changed
            "changes": {k: {"old": to_json_compatible(before[k]), "new": to_json_compatible(v)}
                        for k, v in values.items() if before.get(k) != v},
        }
        if signed_off_by:
            data["signedOffBy"] = signed_off_by
        ex.audit.append("task_completed", actor=completed_by if signed_off_by else actor,
                        activity_id=task.task_definition_key, task_id=task.id, data=data)
        for listener in self.completion_listeners:
            listener(ex, task, completed_by)

    def _submit_for_signoff(self, ex: Execution, task: TaskView, principal: Principal, values: dict[str, Any],
                            accountable: str) -> None:
        row = ex.session.get(HumanTask, task.id)
        pending = {
            "variables": to_storable(values),
            "restore": {"roles": json.loads(row.candidate_roles_json), "users": json.loads(row.candidate_users_json),
                        "owner": row.owner},
        }
        res = ex.session.execute(
            update(HumanTask).where(HumanTask.id == task.id, HumanTask.state == "open", HumanTask.phase == "work")
            .values(phase="signoff", pending_json=json.dumps(pending), submitted_by=principal.user_id,
                    candidate_roles_json=json.dumps([accountable]), candidate_users_json="[]",
                    assignee=None, owner=None)
        )
        if res.rowcount != 1:
            raise Conflict(f"task {task.id} was changed concurrently")
        self._replace_candidates(ex, task.id, [accountable], [])
        ex.audit.append("task_submitted_for_signoff", actor=principal.user_id, activity_id=task.task_definition_key,
                        task_id=task.id, data={
                            "accountable": accountable,
                            "variables": to_json_compatible(values),
                        })

    @staticmethod
    def _replace_candidates(ex: Execution, task_id: str, roles: list[str], users: list[str]) -> None:
        ex.session.execute(delete(TaskCandidate).where(TaskCandidate.task_id == task_id))
        for r in dict.fromkeys(roles):
            ex.session.add(TaskCandidate(task_id=task_id, kind="role", value=r))
        for u in dict.fromkeys(users):
            ex.session.add(TaskCandidate(task_id=task_id, kind="user", value=u))

    @staticmethod
    def _require_phase(ex: Execution, task_id: str, phase: str) -> HumanTask:
        row = ex.open_task(task_id)  # read in the command's transaction, after the instance row
        if row is None or row.state != "open":
            raise Conflict(f"task {task_id} is no longer open")
        if (row.phase or "work") != phase:
            raise Conflict(f"task {task_id} waits for sign-off" if row.phase == "signoff"
                           else f"task {task_id} has no result waiting for sign-off")
        return row

    # -- helpers --------------------------------------------------------------------------
    def _open_task(self, task_id: str) -> TaskView:
        task = self.get(task_id)
        if task.state != "open":
            raise Conflict(f"task {task_id} is {task.state}")
        return task

    @staticmethod
    def _role_message(task: TaskView, principal: Principal) -> str:
        wanted = ", ".join(task.candidate_roles + task.candidate_users) or "nobody (no candidates)"
        return (f"user {principal.user_id} may not work on task {task.id} ({task.name}): "
                f"it is for {wanted}" + (f", assigned to {task.assignee}" if task.assignee else ""))

    def _change_assignment(self, task: TaskView, principal: Principal, event: str, data: dict[str, Any], *,
                           expect_assignee: str | None, values: dict[str, Any], check_user: str | None = None) -> None:
        """Assignment changes don't touch the workflow: a guarded row update plus an audit event."""

        def command(ex: Execution) -> None:
            if ex.row.state != "active":
                raise Conflict(f"process instance {ex.instance_id} is {ex.row.state}")
            if check_user is not None:
                for check in self.actor_checks:
                    check(ex, task, check_user)
            guard = HumanTask.assignee.is_(None) if expect_assignee is None else HumanTask.assignee == expect_assignee
            res = ex.session.execute(
                update(HumanTask).where(HumanTask.id == task.id, HumanTask.state == "open", guard).values(**values)
            )
            if res.rowcount != 1:
                raise Conflict(f"task {task.id} was claimed or changed by someone else")
            ex.audit.append(event, actor=principal.user_id, activity_id=task.task_definition_key, task_id=task.id,
                            data=data)

        self._executor.run(task.process_instance_id, principal.user_id, command)

    def instance_exists(self, instance_id: str) -> bool:
        with self._sessions() as session:
            return session.get(ProcessInstance, instance_id) is not None
