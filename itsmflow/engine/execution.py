"""Running one command against one instance: load → change → engine steps → persist.

Every service call that changes an instance goes through :class:`Executor`. It restores the
instance from its snapshot (with the cached spec), lets the command change the workflow, runs
SpiffWorkflow's engine steps, and writes everything in **one transaction**:

- the instance row, guarded by optimistic locking (``UPDATE … WHERE version = :read_version``;
  a concurrent writer that got there first turns this command into a :class:`Conflict`),
- the human task rows (new READY user tasks inserted, vanished ones cancelled),
- the audit events of the change (hash-chained),
- incidents for failures (a failing script never crashes the caller).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

import isodate
from SpiffWorkflow.bpmn.specs.event_definitions.item_aware_event import SignalEventDefinition
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from . import snapshot
from .errors import Conflict, NotFound
from .clock import utcnow
from .history import AuditWriter
from .repository import CachedDefinition, SpecCache
from .storage.models import HumanTask, Incident, Job, ProcessInstance, TaskCandidate
from .variables import diff, to_json_compatible
from .waits import evaluate_correlation, sync_waits

log = logging.getLogger("itsmflow.engine")

T = TypeVar("T")

RUNNING_STATES = ("active", "suspended")
_VAR_REF = re.compile(r"^\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}$")
_ROLE_LIKE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# activity types for which the engine records the data a step changed
_DATA_CHANGING_TYPES = {"scriptTask", "businessRuleTask", "serviceTask", "sendTask"}


def lane_role(lane_id: str | None, lane_name: str | None) -> str | None:
    """Lanes named by a role id (``change-manager``) make that role the candidate of their tasks."""
    for value in (lane_name, lane_id):
        if value and _ROLE_LIKE.match(value.strip()):
            return value.strip()
    return lane_name or lane_id


def _resolve(value: str | None, data: dict[str, Any]) -> str | None:
    """Resolve a Camunda-style ``${variable}`` reference against task data (plain values pass)."""
    if not value:
        return None
    m = _VAR_REF.match(value.strip())
    if m:
        found = data.get(m.group(1))
        return str(found) if found not in (None, "") else None
    return value.strip()


def _resolve_list(values: list[str], data: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        m = _VAR_REF.match(v.strip())
        if m:
            found = data.get(m.group(1))
            if isinstance(found, (list, tuple)):
                out.extend(str(x) for x in found)
            elif isinstance(found, str):
                out.extend(s.strip() for s in found.split(",") if s.strip())
        elif v.strip():
            out.append(v.strip())
    return list(dict.fromkeys(out))


def _due(value: str | None, data: dict[str, Any], now: datetime) -> datetime | None:
    """``camunda:dueDate``: an ISO 8601 date-time, a duration from now (``P2D``), or ``${var}``."""
    raw = _resolve(value, data)
    if not raw:
        return None
    try:
        if raw.startswith("P"):
            return now + isodate.parse_duration(raw)
        parsed = isodate.parse_datetime(raw) if "T" in raw else datetime.combine(isodate.parse_date(raw), datetime.min.time())
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except (isodate.ISO8601Error, ValueError):
        log.warning("ignoring unparsable due date %r", raw)
        return None


def frontier_data(workflow: BpmnWorkflow) -> dict[str, Any]:
    """The instance's variables: data of the tokens still moving, or of the last task when done."""
    data: dict[str, Any] = {}
    live = workflow.get_tasks(state=TaskState.READY | TaskState.WAITING | TaskState.STARTED | TaskState.ERROR)
    if not live or workflow.completed:
        last = workflow.last_task
        if last is not None:
            data.update(last.data)
    # the most recently changed token wins (a timer still waiting on a parallel branch holds older data)
    for task in sorted(live, key=lambda t: t.last_state_change or 0):
        data.update(task.data)
    data.pop("data_objects", None)
    data.update({k: v for k, v in (workflow.data.get("data_objects") or {}).items() if v is not None})
    return data


@dataclass
class Execution:
    """The state of one command in progress. Services mutate ``workflow`` and add audit events."""

    session: Session
    row: ProcessInstance
    definition: CachedDefinition
    workflow: BpmnWorkflow
    actor: str | None
    audit: AuditWriter
    new_state: str | None = None
    end_reason: str | None = None
    completed_task_ids: set[str] = field(default_factory=set)
    completed_by: str | None = None
    incidents: list[Incident] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)  # outbox (thrown messages/signals) and retries
    retry: RetryPolicy | None = None
    retry_job: Job | None = None  # set when this command is a retry of a failed step
    new_message_wait: bool = False  # set on persist: the instance now waits for a message it did not before
    _before: dict[str, dict[str, Any]] = field(default_factory=dict)
    _thrown: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def instance_id(self) -> str:
        return self.row.id

    def ready_task(self, task_id: str) -> Task:
        try:
            task = self.workflow.get_task_from_id(uuid.UUID(task_id))
        except Exception:  # noqa: BLE001 - Spiff raises a generic TaskNotFoundException
            task = None
        if task is None or task.state != TaskState.READY:
            raise Conflict(f"task {task_id} is no longer open")
        return task

    # -- engine steps ---------------------------------------------------------------------
    def run_engine_steps(self) -> None:
        if self.new_state in ("terminated", "suspended") or self.row.state == "suspended" and self.new_state is None:
            return
        try:
            self.workflow.do_engine_steps(self._will_complete, self._did_complete)
        except Exception as exc:  # noqa: BLE001 - a failing step becomes an incident, never a crash
            self._record_failure(exc)
        self._collect_thrown_events()

    def _collect_thrown_events(self) -> None:
        """Events the workflow could not handle itself go to the durable outbox (job rows)."""
        for event in self.workflow.get_events():
            definition = event.event_definition
            kind = "signal" if isinstance(definition, SignalEventDefinition) else "message"
            variables = _event_variables(event.payload, self._thrown.get(definition.name))
            correlation = None
            if kind == "message":
                correlation = evaluate_correlation(self.workflow.script_engine, definition, variables)
            payload = {
                "name": definition.name,
                "variables": to_storable(variables),
                "businessKey": self.row.business_key,
                "correlation": correlation,
                "source": self.instance_id,
            }
            self.jobs.append(Job(
                id=str(uuid.uuid4()), job_type=kind, instance_id=None, due_at=utcnow(),
                payload_json=json.dumps(payload, default=str), created_at=utcnow(),
            ))
            self.audit.append(f"{kind}_thrown", actor="engine", data={
                "name": definition.name, "correlation": correlation,
            })

    def _will_complete(self, task: Task) -> None:
        if self._activity_type(task) in _DATA_CHANGING_TYPES:
            self._before[str(task.id)] = copy.deepcopy(task.data)

    def _did_complete(self, task: Task) -> None:
        bpmn_id = getattr(task.task_spec, "bpmn_id", None)
        if not bpmn_id:
            return
        definition = getattr(task.task_spec, "event_definition", None)
        if definition is not None and getattr(definition, "name", None):
            self._thrown[definition.name] = {k: v for k, v in task.data.items() if k != "data_objects"}
        data: dict[str, Any] = {"type": self._activity_type(task)}
        before = self._before.pop(str(task.id), None)
        if before is not None:
            changes = diff(before, task.data)
            if changes:
                data["changes"] = changes
        if data["type"] == "exclusiveGateway" or data["type"] == "inclusiveGateway":
            data["taken"] = [c.task_spec.bpmn_id for c in task.children if c.state != TaskState.CANCELLED and getattr(c.task_spec, "bpmn_id", None)]
        self.audit.append("activity_completed", actor="engine", activity_id=bpmn_id, data=data)

    def _activity_type(self, task: Task) -> str:
        bpmn_id = getattr(task.task_spec, "bpmn_id", None)
        info = self.definition.activity(bpmn_id) if bpmn_id else {}
        return info.get("type") or type(task.task_spec).__name__

    def _record_failure(self, exc: Exception) -> None:
        failed = self.workflow.get_tasks(state=TaskState.ERROR)
        task = failed[0] if failed else None
        activity_id = getattr(task.task_spec, "bpmn_id", None) if task else None
        message = _describe(exc)
        log.warning("instance %s: step %s failed: %s", self.instance_id, activity_id, message)
        policy = self.retry or RetryPolicy()
        if activity_id:
            policy = RetryPolicy.parse(self.definition.activity(activity_id).get("retry_cycle"), policy)
        retries_left = self.retry_job.retries_left if self.retry_job is not None else policy.retries
        if task is not None and retries_left > 0:
            due = utcnow() + policy.interval
            self.jobs.append(Job(
                id=str(uuid.uuid4()), job_type="retry", instance_id=self.instance_id, spiff_task_id=str(task.id),
                activity_id=activity_id, due_at=due, retries_left=retries_left - 1,
                attempts=(self.retry_job.attempts if self.retry_job is not None else 0) + 1,
                last_error=message, payload_json="{}", created_at=utcnow(),
            ))
            self.audit.append("step_failed", actor="engine", activity_id=activity_id, data={
                "message": message, "retriesLeft": retries_left - 1, "nextAttempt": due.isoformat(),
            })
            return
        incident = Incident(
            id=str(uuid.uuid4()),
            instance_id=self.instance_id,
            activity_id=activity_id,
            spiff_task_id=str(task.id) if task else None,
            incident_type="failedTask",
            message=message,
            state="open",
            created_at=utcnow(),
        )
        self.incidents.append(incident)
        self.audit.append(
            "incident_created", actor="engine", activity_id=activity_id,
            data={"incidentId": incident.id, "message": message},
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing step is retried, and how long apart (Camunda's ``R3/PT10S`` notation)."""

    retries: int = 3
    interval: timedelta = timedelta(seconds=10)

    @classmethod
    def parse(cls, cycle: str | None, default: "RetryPolicy") -> "RetryPolicy":
        if not cycle:
            return default
        m = re.fullmatch(r"R(\d+)/(P.+)", cycle.strip())
        if not m:
            log.warning("ignoring unparsable retry cycle %r", cycle)
            return default
        try:
            return cls(int(m.group(1)), isodate.parse_duration(m.group(2)))
        except (isodate.ISO8601Error, ValueError):
            return default


def _event_variables(payload: Any, thrower_data: dict[str, Any] | None) -> dict[str, Any]:
    """A thrown event's variables: the ``camunda:expression`` result when it is a mapping,
    otherwise the variables of the throwing task."""
    if isinstance(payload, dict) and "result_var" in payload and "payload" in payload:
        value = payload["payload"]
        if isinstance(value, dict):
            return dict(value)
        if value is not None:
            return {payload.get("result_var") or "payload": value}
        return dict(thrower_data or {})
    if isinstance(payload, dict):
        return dict(payload)
    return dict(thrower_data or {})


def to_storable(variables: dict[str, Any]) -> Any:
    """Variables as tagged JSON (keeps dates/decimals) for job payloads; see :func:`from_storable`."""
    from . import snapshot

    return snapshot.serializer().registry.convert(variables)


def from_storable(value: Any) -> Any:
    from . import snapshot

    return snapshot.serializer().registry.restore(value)


def _describe(exc: Exception) -> str:
    parts = [str(exc) or type(exc).__name__]
    inner = getattr(exc, "exception", None) or exc.__cause__
    if inner is not None and str(inner) and str(inner) not in parts[0]:
        parts.append(f"{type(inner).__name__}: {inner}")
    for note in getattr(exc, "__notes__", [])[:3]:
        parts.append(note)
    return " — ".join(parts)[:4000]


def is_contention(exc: OperationalError) -> bool:
    """Lock timeouts, busy databases, serialization failures and deadlocks: retryable, not bugs."""
    text = str(exc.orig).lower()
    return any(s in text for s in ("locked", "busy", "could not serialize", "deadlock", "lock timeout"))


class ConcurrentModification(Conflict):
    """Another writer changed the instance after we read it (optimistic lock lost)."""


# (instance id, jobs the command created, whether it started waiting for a new message)
AfterCommit = Callable[[str, list[Job], bool], None]
# called in the command's transaction for every new human task row (notifications, ...)
TaskCreatedHook = Callable[["Execution", HumanTask], None]
# variables every new instance of a definition starts with (pack policies, ...); they override
# the caller's variables of the same name
StartVariables = Callable[[CachedDefinition], dict[str, Any]]


class Executor:
    def __init__(self, sessions: sessionmaker[Session], cache: SpecCache, script_engine: Any,
                 retry_policy: RetryPolicy | None = None) -> None:
        self._sessions = sessions
        self._cache = cache
        self.script_engine = script_engine
        self.retry_policy = retry_policy or RetryPolicy()
        # called after each successful commit with the instance id and the jobs it created
        # (the message router delivers thrown messages from here)
        self.after_commit: list[AfterCommit] = []
        # who new human tasks are for (replaced by the RACI strategy in Engine)
        self.assignment: Any = BpmnAssignment()
        self.on_task_created: list[TaskCreatedHook] = []
        self.start_variables: list[StartVariables] = []

    def _committed(self, instance_id: str, jobs: list[Job], new_message_wait: bool = False) -> None:
        for listener in self.after_commit:
            try:
                listener(instance_id, jobs, new_message_wait)
            except Exception:  # noqa: BLE001 - the command has committed; the job executor retries
                log.exception("after-commit processing failed for instance %s", instance_id)

    # -- entry points ---------------------------------------------------------------------
    def start(
        self,
        definition: CachedDefinition,
        *,
        business_key: str | None,
        variables: dict[str, Any],
        actor: str | None,
        prepare: Callable[[Execution], None] | None = None,
    ) -> str:
        """Create an instance, run it to its first wait state, persist it; returns its id."""
        workflow = BpmnWorkflow(definition.spec, definition.subprocess_specs, script_engine=self.script_engine)
        start = workflow.get_next_task(state=TaskState.READY)
        for provider in self.start_variables:
            variables = {**variables, **provider(definition)}
        if start is not None:
            start.data.update(copy.deepcopy(variables))
        now = utcnow()
        instance_id = str(uuid.uuid4())
        row = ProcessInstance(
            id=instance_id,
            definition_id=definition.id,
            definition_key=definition.key,
            definition_version=definition.version,
            business_key=business_key,
            state="active",
            version=0,
            snapshot="{}",
            audit_seq=0,
            audit_head=None,
            variables_json="{}",
            activities_json="[]",
            started_by=actor,
            started_at=now,
            updated_at=now,
        )
        with self._sessions() as session:
            if business_key is not None:
                clash = session.scalars(
                    select(ProcessInstance.id).where(
                        ProcessInstance.definition_key == definition.key,
                        ProcessInstance.business_key == business_key,
                        ProcessInstance.state.in_(RUNNING_STATES),
                    )
                ).first()
                if clash:
                    raise Conflict(
                        f"business key {business_key!r} is already used by running instance {clash} of {definition.key!r}"
                    )
            ex = Execution(session, row, definition, workflow, actor, AuditWriter.new_chain(instance_id),
                           retry=self.retry_policy)
            ex.audit.append(
                "process_started", actor=actor,
                data={"definitionId": definition.id, "businessKey": business_key, "variables": variables},
                at=now,
            )
            if prepare is not None:
                prepare(ex)
            ex.run_engine_steps()
            try:
                self._persist(ex, insert=True)
                session.commit()
                jobs = list(ex.jobs)
                new_wait = ex.new_message_wait
            except IntegrityError as exc:
                session.rollback()
                raise Conflict(
                    f"business key {business_key!r} is already used by a running instance of {definition.key!r}"
                ) from exc
            except OperationalError as exc:
                session.rollback()
                if not is_contention(exc):
                    raise
                raise Conflict(f"the database was busy; retry ({exc.orig})") from exc
        self._committed(instance_id, jobs, new_wait)
        return instance_id

    def run(self, instance_id: str, actor: str | None, command: Callable[[Execution], T], *, attempts: int = 3) -> T:
        """Apply ``command`` to an instance and persist the result atomically.

        When another writer changed the instance between our read and our write, the command is
        re-applied to the fresh state (it re-checks its own preconditions, so a task completed by
        someone else now fails with a plain :class:`Conflict`).
        """
        for attempt in range(attempts):
            try:
                return self._run_once(instance_id, actor, command)
            except ConcurrentModification:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _run_once(self, instance_id: str, actor: str | None, command: Callable[[Execution], T]) -> T:
        with self._sessions() as session:
            row = session.get(ProcessInstance, instance_id)
            if row is None:
                raise NotFound(f"process instance {instance_id} does not exist")
            session.expunge(row)  # read-only copy: all writes go through the guarded UPDATE
            definition = self._cache.get(row.definition_id, session)
            workflow = snapshot.load(row.snapshot, definition.spec, definition.subprocess_specs, self.script_engine)
            ex = Execution(session, row, definition, workflow, actor,
                           AuditWriter.continue_chain(row.id, row.audit_seq, row.audit_head), retry=self.retry_policy)
            result = command(ex)
            ex.run_engine_steps()
            try:
                self._persist(ex, insert=False)
                session.commit()
                jobs = list(ex.jobs)
                new_wait = ex.new_message_wait
            except ConcurrentModification:
                session.rollback()
                raise
            except (IntegrityError, OperationalError) as exc:
                session.rollback()
                if isinstance(exc, OperationalError) and not is_contention(exc):
                    raise
                raise ConcurrentModification(
                    f"process instance {instance_id} was changed concurrently; reload and retry"
                ) from exc
        self._committed(instance_id, jobs, new_wait)
        return result

    def load_workflow(self, instance_id: str) -> tuple[ProcessInstance, CachedDefinition, BpmnWorkflow]:
        """Read-only access to an instance's workflow (e.g. to read task data for a form)."""
        with self._sessions() as session:
            row = session.get(ProcessInstance, instance_id)
            if row is None:
                raise NotFound(f"process instance {instance_id} does not exist")
            definition = self._cache.get(row.definition_id, session)
            wf = snapshot.load(row.snapshot, definition.spec, definition.subprocess_specs, self.script_engine)
            return row, definition, wf

    # -- persistence ----------------------------------------------------------------------
    def _persist(self, ex: Execution, *, insert: bool) -> None:
        session, wf, row = ex.session, ex.workflow, ex.row
        now = utcnow()
        state = ex.new_state or row.state
        if state == "active" and wf.completed:
            state = "completed"
            ex.audit.append("process_completed", actor=ex.actor, data={})
        variables = frontier_data(wf)
        activities = self._activities(ex) if state in RUNNING_STATES else []
        ended = state in ("completed", "terminated")
        new_tasks, gone_ids = self._task_changes(ex, now, state)

        values = dict(
            state=state,
            version=row.version + 1,
            snapshot=snapshot.dump(wf),
            variables_json=json.dumps(to_json_compatible(variables)),
            activities_json=json.dumps(activities),
            updated_at=now,
            audit_seq=ex.audit.seq,
            audit_head=ex.audit.prev_hash,
        )
        if ended:
            values["ended_at"] = now
            values["end_reason"] = ex.end_reason
        if insert:
            for k, v in values.items():
                setattr(row, k, v)
            session.add(row)
            session.flush()
        else:
            res = session.execute(
                update(ProcessInstance)
                .where(ProcessInstance.id == row.id, ProcessInstance.version == row.version)
                .values(**values)
            )
            if res.rowcount != 1:
                raise ConcurrentModification(f"process instance {row.id} was changed concurrently; reload and retry")

        # human tasks: close completed / vanished ones, open new ones
        for tid in ex.completed_task_ids:
            res = session.execute(
                update(HumanTask)
                .where(HumanTask.id == tid, HumanTask.state == "open")
                .values(state="completed", completed_at=now, completed_by=ex.completed_by or ex.actor)
            )
            if res.rowcount != 1:
                raise Conflict(f"task {tid} was completed concurrently")
        if gone_ids:
            session.execute(
                update(HumanTask)
                .where(HumanTask.id.in_(gone_ids), HumanTask.state == "open")
                .values(state="cancelled", completed_at=now)
            )
        closed = list(ex.completed_task_ids) + list(gone_ids)
        if closed:  # candidate rows serve inbox queries of open tasks only: keep that index small
            session.execute(delete(TaskCandidate).where(TaskCandidate.task_id.in_(closed)))
        for task_row, candidates in new_tasks:
            session.add(task_row)
        session.flush()
        for task_row, candidates in new_tasks:
            for kind, value in candidates:
                session.add(TaskCandidate(task_id=task_row.id, kind=kind, value=value))
        for incident in ex.incidents:
            session.add(incident)
        ex.new_message_wait = sync_waits(session, row.id, row.business_key, wf if state in RUNNING_STATES else None,
                                         first_write=insert)
        for job in ex.jobs:
            session.add(job)
        ex.audit.write(session)
        session.flush()

    def _activities(self, ex: Execution) -> list[dict[str, Any]]:
        out, seen = [], set()
        for task in ex.workflow.get_tasks(state=TaskState.READY | TaskState.WAITING | TaskState.STARTED | TaskState.ERROR):
            bpmn_id = getattr(task.task_spec, "bpmn_id", None)
            if not bpmn_id or (bpmn_id, task.state) in seen:
                continue
            seen.add((bpmn_id, task.state))
            info = ex.definition.activity(bpmn_id)
            out.append({
                "activityId": bpmn_id,
                "name": getattr(task.task_spec, "bpmn_name", None) or info.get("name"),
                "type": info.get("type") or type(task.task_spec).__name__,
                "state": TaskState.get_name(task.state).lower(),
            })
        return out

    def _task_changes(self, ex: Execution, now: datetime, state: str):  # noqa: ANN202
        """Diff READY manual tasks in the workflow against open task rows of the instance."""
        open_ids = set() if ex.row.version == 0 else set(
            ex.session.scalars(
                select(HumanTask.id).where(HumanTask.instance_id == ex.row.id, HumanTask.state == "open")
            )
        )
        open_ids -= ex.completed_task_ids
        ready: dict[str, Task] = {}
        if state in RUNNING_STATES:
            for task in ex.workflow.get_tasks(state=TaskState.READY, manual=True):
                ready[str(task.id)] = task
        gone = sorted(open_ids - set(ready))
        new = []
        for tid, task in ready.items():
            if tid in open_ids:
                continue
            new.append(self._new_task_row(ex, task, now))
        for tid in gone:
            ex.audit.append("task_cancelled", actor=ex.actor, task_id=tid, data={})
        return new, gone

    def _new_task_row(self, ex: Execution, task: Task, now: datetime):  # noqa: ANN202
        bpmn_id = task.task_spec.bpmn_id
        meta = ex.definition.user_task(bpmn_id)
        data = task.data
        assignment = self.assignment.assign(ex, task, meta)
        roles, users, assignee = assignment.candidate_roles, assignment.candidate_users, assignment.assignee
        row = HumanTask(
            id=str(task.id),
            instance_id=ex.row.id,
            definition_id=ex.definition.id,
            definition_key=ex.definition.key,
            business_key=ex.row.business_key,
            task_definition_key=bpmn_id,
            name=getattr(task.task_spec, "bpmn_name", None) or meta.get("name") or bpmn_id,
            lane=meta.get("lane") or getattr(task.task_spec, "lane", None),
            candidate_roles_json=json.dumps(roles),
            candidate_users_json=json.dumps(users),
            assignee=assignee,
            state="open",
            phase="work",
            form_key=meta.get("form_key"),
            created_at=now,
            due=_due(meta.get("due_date"), data, now),
        )
        ex.audit.append(
            "task_created", actor=ex.actor, activity_id=bpmn_id, task_id=row.id,
            data={"name": row.name, "candidateRoles": roles, "candidateUsers": users, "assignee": assignee},
            at=now,
        )
        for hook in self.on_task_created:
            hook(ex, row)
        candidates = [("role", r) for r in roles] + [("user", u) for u in users]
        return row, candidates


@dataclass
class Assignment:
    """Who a new human task is for: candidate roles and users, and an optional assignee."""

    candidate_roles: list[str]
    candidate_users: list[str]
    assignee: str | None = None


class BpmnAssignment:
    """Assignment from the BPMN alone: ``camunda:candidateGroups`` (else the lane named by a role id),
    ``camunda:candidateUsers`` and ``camunda:assignee`` (fixed or ``${variable}``).

    Other strategies (the pack's RACI, :mod:`itsmflow.engine.raci`) wrap this one and replace
    :attr:`Executor.assignment`.
    """

    def assign(self, ex: Execution, task: Task, meta: dict[str, Any]) -> Assignment:
        data = task.data
        roles = _resolve_list(meta.get("candidate_groups") or [], data)
        if not roles:
            role = lane_role(meta.get("lane_id"), meta.get("lane") or getattr(task.task_spec, "lane", None))
            roles = [role] if role else []
        users = _resolve_list(meta.get("candidate_users") or [], data)
        return Assignment(roles, users, _resolve(meta.get("assignee"), data))
