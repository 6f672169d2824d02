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
from contextvars import ContextVar
import json
import logging
import re
import threading
import uuid
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

import isodate
from SpiffWorkflow.bpmn.specs.event_definitions.item_aware_event import SignalEventDefinition
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import bindparam, delete, exists, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from . import snapshot
from .errors import Conflict, NotFound
from .clock import as_utc, utcnow
from .history import AuditWriter
from .repository import CachedDefinition, SpecCache
from .storage.models import HumanTask, Incident, Job, ProcessInstance, TaskCandidate
from .variables import diff, to_json_compatible
from .waits import evaluate_correlation, has_waits, sync_waits

log = logging.getLogger("itsmflow.engine")

T = TypeVar("T")

RUNNING_STATES = ("active", "suspended")
# The command whose engine steps run in this thread: functions the engine offers to scripts (such as
# schedule_entries, :mod:`itsmflow.engine.schedule`) read their instance and session from it.
current_execution: ContextVar["Execution | None"] = ContextVar("itsmflow_current_execution", default=None)
_VAR_REF = re.compile(r"^\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}$")
_ROLE_LIKE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# activity types for which the engine records the data a step changed
_DATA_CHANGING_TYPES = {"scriptTask", "businessRuleTask", "serviceTask", "sendTask"}
# activities whose completion leaves only data that survives a snapshot round trip unchanged (user
# input is validated to round-trippable types; gateways only read). After any other activity (a
# script may leave a tuple, which a restore turns into a list) the in-memory workflow is not cached.
_CACHE_SAFE_TYPES = {"userTask", "manualTask", "task", "exclusiveGateway", "parallelGateway",
                     "inclusiveGateway", "startEvent", "endEvent"}

# Pre-built Core statements for the per-command path: no ORM unit of work, no statement building
# per call, and SQLAlchemy's compiled cache is hit by the same statement object every time.
_PI = ProcessInstance.__table__
_HT = HumanTask.__table__
_TC = TaskCandidate.__table__
_PI_COLS = [c for c in _PI.columns]
_PI_NO_SNAPSHOT = [c for c in _PI.columns if c.key != "snapshot"]
_HT_KEYS = [c.key for c in _HT.columns]
_INC = Incident.__table__
# read with the instance row: whether it has open incidents (the reply lists them; most have none)
_HAS_INCIDENT = exists().where(_INC.c.instance_id == _PI.c.id, _INC.c.state == "open").label("_has_incident")
_SELECT_INSTANCE = select(*_PI_COLS, _HAS_INCIDENT).where(_PI.c.id == bindparam("iid"))
_SELECT_INSTANCE_NO_SNAPSHOT = select(*_PI_NO_SNAPSHOT, _HAS_INCIDENT).where(_PI.c.id == bindparam("iid"))
_SELECT_INSTANCE_BY_TASK = select(*_PI_COLS, _HAS_INCIDENT).where(_PI.c.id == select(_HT.c.instance_id).where(
    _HT.c.id == bindparam("tid")).scalar_subquery())
_SELECT_SNAPSHOT = select(_PI.c.snapshot).where(_PI.c.id == bindparam("iid"), _PI.c.version == bindparam("ver"))
_INSERT_INSTANCE = insert(_PI)
_UPDATE_INSTANCE = update(_PI).where(_PI.c.id == bindparam("_iid"), _PI.c.version == bindparam("_ver"))
_SELECT_OPEN_TASKS = select(_HT).where(_HT.c.instance_id == bindparam("iid"), _HT.c.state == "open")
_COMPLETE_TASK = (update(_HT).where(_HT.c.id == bindparam("_tid"), _HT.c.state == "open")
                  .values(state="completed", completed_at=bindparam("_at"), completed_by=bindparam("_by")))
_CANCEL_TASKS = (update(_HT).where(_HT.c.id.in_(bindparam("_ids", expanding=True)), _HT.c.state == "open")
                 .values(state="cancelled", completed_at=bindparam("_at")))
_DELETE_CANDIDATES = delete(_TC).where(_TC.c.task_id.in_(bindparam("ids", expanding=True)))
# PostgreSQL: complete the task and drop its candidate rows in one statement (one round trip less;
# the row count is the UPDATE's, so the completion stays guarded)
_PG_COMPLETE_TASK = text(
    "WITH gone AS (DELETE FROM task_candidate WHERE task_id = :_tid) "
    "UPDATE human_task SET state = 'completed', completed_at = :_at, completed_by = :_by "
    "WHERE id = :_tid AND state = 'open'")
_INSERT_TASK = insert(_HT)
_SELECT_OPEN_INCIDENTS = select(_INC).where(_INC.c.instance_id == bindparam("iid"), _INC.c.state == "open")
_INSERT_CANDIDATE = insert(_TC)
_BUSINESS_KEY_CLASH = select(_PI.c.id).where(
    _PI.c.definition_key == bindparam("key"), _PI.c.business_key == bindparam("bk"),
    _PI.c.state.in_(("active", "suspended"))).limit(1)


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


_LIVE = TaskState.READY | TaskState.WAITING | TaskState.STARTED | TaskState.ERROR


def frontier_data(workflow: BpmnWorkflow, live: list[Task] | None = None) -> dict[str, Any]:
    """The instance's variables: data of the tokens still moving, or of the last task when done.
    ``live``: the workflow's READY/WAITING/STARTED/ERROR tasks, when the caller has walked the tree."""
    data: dict[str, Any] = {}
    if live is None:
        live = workflow.get_tasks(state=_LIVE)
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
    # whether the state read had waits (subscription/timer rows); None = unknown, sync reads the rows
    had_waits: bool | None = None
    # False once something ran whose in-memory result may differ from a snapshot round trip
    cacheable: bool = True
    persisted: "Persisted | None" = None  # what _persist wrote (the reply is built from it)
    reply: bool = False  # the caller answers from ``persisted``: read the open incidents too
    had_incident: bool = True  # the instance had open incidents when read (False: none to read back)
    # set after commit: a command run by the after-commit listeners (a buffered message delivered, a reply
    # to a thrown message...) changed this instance again, so ``persisted`` is no longer its latest state
    changed_after_commit: bool = False
    _before: dict[str, dict[str, Any]] = field(default_factory=dict)
    _thrown: dict[str, dict[str, Any]] = field(default_factory=dict)
    _open_rows: dict[str, Any] | None = None

    @property
    def instance_id(self) -> str:
        return self.row.id

    def open_task_rows(self) -> dict[str, Any]:
        """The instance's open human task rows (id → row), read once per command in its transaction."""
        if self._open_rows is None:
            conn = self.session.connection()
            self._open_rows = {r.id: r for r in conn.execute(_SELECT_OPEN_TASKS, {"iid": self.row.id})}
        return self._open_rows

    def open_task(self, task_id: str) -> Any | None:
        """An open human task row of this instance as read in this transaction (None if not open)."""
        return self.open_task_rows().get(task_id)

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
        token = current_execution.set(self)  # functions offered to scripts see their instance and session
        try:
            self.workflow.do_engine_steps(self._will_complete, self._did_complete)
        except Exception as exc:  # noqa: BLE001 - a failing step becomes an incident, never a crash
            self._record_failure(exc)
        finally:
            current_execution.reset(token)
        self._collect_thrown_events()

    def _collect_thrown_events(self) -> None:
        """Events the workflow could not handle itself go to the durable outbox (job rows)."""
        for event in self.workflow.get_events():
            self.cacheable = False
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
        if self.cacheable and (data["type"] not in _CACHE_SAFE_TYPES or self.definition.activity(bpmn_id).get("event")):
            self.cacheable = False
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
        self.cacheable = False
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


class WrittenRow(dict):
    """A row this command wrote, as a dict with attribute access (like the rows it read)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Persisted:
    """What one command wrote for its instance: enough to answer the caller without re-reading."""

    values: dict[str, Any]  # the instance row's written columns (without the snapshot)
    variables: dict[str, Any]  # JSON-compatible variables, as written
    activities: list[dict[str, Any]]
    open_tasks: list[Any]  # the instance's open human task rows after the command (attribute access)
    incidents: list[Any] = field(default_factory=list)  # open incidents (only when a reply was asked for)


@dataclass(frozen=True)
class _ByTask:
    task_id: str


@dataclass
class _CachedWorkflow:
    version: int
    workflow: BpmnWorkflow
    had_waits: bool
    task_ids: tuple[str, ...] = ()


class WorkflowCache:
    """Workflows restored or written by recent commands of this process, keyed by instance id and
    the row ``version`` they were written as.

    A command *takes* the entry (nobody else can use that object meanwhile) and uses it only if
    the version it just read from the database is the cached one: every write bumps the version,
    so a change by another process (or a failed command of this one) makes the entry a miss and
    the workflow is restored from the snapshot. Only a committed command puts its workflow back.
    """

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, _CachedWorkflow] = OrderedDict()
        self._lock = threading.Lock()
        # open human task id -> instance id of cached entries (task ids never change instance)
        self._by_task: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    def __contains__(self, instance_id: str) -> bool:
        return instance_id in self._items

    def instance_for_task(self, task_id: str) -> str | None:
        """The instance of an open task of a cached entry (a hint: the entry may be stale)."""
        return self._by_task.get(task_id)

    def _drop(self, entry: _CachedWorkflow) -> None:
        for tid in entry.task_ids:
            self._by_task.pop(tid, None)

    def take(self, instance_id: str, version: int) -> _CachedWorkflow | None:
        with self._lock:
            entry = self._items.pop(instance_id, None)
            if entry is not None:
                self._drop(entry)
            if entry is not None and entry.version == version:
                self.hits += 1
                return entry
            self.misses += 1
            return None

    def put(self, instance_id: str, entry: _CachedWorkflow) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            current = self._items.get(instance_id)
            if current is not None and current.version > entry.version:
                return
            if current is not None:
                self._drop(current)
            self._items[instance_id] = entry
            self._items.move_to_end(instance_id)
            for tid in entry.task_ids:
                self._by_task[tid] = instance_id
            while len(self._items) > self.capacity:
                self._drop(self._items.popitem(last=False)[1])

    def discard(self, instance_id: str) -> None:
        with self._lock:
            entry = self._items.pop(instance_id, None)
            if entry is not None:
                self._drop(entry)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._by_task.clear()


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
        # restored workflows of recent commands, valid for the row version they were written as
        self.workflows = WorkflowCache()
        # per thread: the sets of instance ids committed while an after-commit phase runs (see _committed)
        self._observers = threading.local()
        # SQLite has one writer at a time; threads of this process that collide wait in SQLite's busy
        # handler, which sleeps in steps of up to 100 ms. Queueing them here instead turns those
        # sleeps into a plain wait for the lock (other processes still meet the busy handler).
        bind = sessions.kw.get("bind")
        sqlite = getattr(getattr(bind, "dialect", None), "name", None) == "sqlite"
        self._writer: Any = threading.RLock() if sqlite else nullcontext()

    def _committed(self, instance_id: str, jobs: list[Job], new_message_wait: bool = False,
                   ex: "Execution | None" = None) -> None:
        """Run the after-commit listeners. They may run further commands in this thread (messages are
        delivered synchronously); when one of them changes ``instance_id`` again, ``ex`` is marked
        ``changed_after_commit`` so that a reply is not built from its now older state."""
        stack: list[set[str]] = getattr(self._observers, "stack", None) or []
        self._observers.stack = stack
        for observer in stack:
            observer.add(instance_id)
        touched: set[str] = set()
        stack.append(touched)
        try:
            for listener in self.after_commit:
                try:
                    listener(instance_id, jobs, new_message_wait)
                except Exception:  # noqa: BLE001 - the command has committed; the job executor retries
                    log.exception("after-commit processing failed for instance %s", instance_id)
        finally:
            stack.pop()
        if ex is not None and instance_id in touched:
            ex.changed_after_commit = True

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
        with self._writer:  # SQLite: one writing command at a time in this process (see __init__)
            with self._sessions() as session:
                if business_key is not None:
                    clash = session.connection().execute(
                        _BUSINESS_KEY_CLASH, {"key": definition.key, "bk": business_key}).scalar()
                    if clash:
                        raise Conflict(
                            f"business key {business_key!r} is already used by running instance {clash} of {definition.key!r}"
                        )
                ex = Execution(session, row, definition, workflow, actor, AuditWriter.new_chain(instance_id),
                               retry=self.retry_policy, had_waits=False, _open_rows={})
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
        self._remember(ex)
        self._committed(instance_id, jobs, new_wait)
        return instance_id

    def run(self, instance_id: str, actor: str | None, command: Callable[[Execution], T], *, attempts: int = 3,
            want: list[Execution] | None = None) -> T:
        """Apply ``command`` to an instance and persist the result atomically.

        When another writer changed the instance between our read and our write, the command is
        re-applied to the fresh state (it re-checks its own preconditions, so a task completed by
        someone else now fails with a plain :class:`Conflict`). ``want`` receives the committed
        :class:`Execution` (its ``persisted`` state answers the caller without re-reading).
        """
        for attempt in range(attempts):
            try:
                return self._run_once(instance_id, actor, command, want)
            except ConcurrentModification:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def run_for_task(self, task_id: str, actor: str | None, command: Callable[[Execution], T], *,
                     attempts: int = 3, want: list[Execution] | None = None) -> T:
        """:meth:`run` on the instance of human task ``task_id``, found in the command's own transaction
        (the command reads the task row with :meth:`Execution.open_task`)."""
        for attempt in range(attempts):
            try:
                return self._run_once(self.workflows.instance_for_task(task_id) or _ByTask(task_id), actor,
                                      command, want)
            except ConcurrentModification:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _read(self, session: Session, instance_id: "str | _ByTask",
              ) -> tuple[ProcessInstance, _CachedWorkflow | None, str | None, bool]:
        """The instance row (a detached copy), the cached workflow of its version if this process has
        it, else the snapshot to restore from; and whether the instance has open incidents."""
        conn = session.connection()
        if isinstance(instance_id, _ByTask):
            found = conn.execute(_SELECT_INSTANCE_BY_TASK, {"tid": instance_id.task_id}).first()
            if found is None:
                raise NotFound(f"task {instance_id.task_id!r} does not exist")
            instance_id = found.id
        else:
            likely_hit = instance_id in self.workflows
            found = conn.execute(_SELECT_INSTANCE_NO_SNAPSHOT if likely_hit else _SELECT_INSTANCE,
                                 {"iid": instance_id}).first()
        if found is None:
            raise NotFound(f"process instance {instance_id} does not exist")
        values = found._asdict()
        has_incident = bool(values.pop("_has_incident"))
        cached = self.workflows.take(instance_id, values["version"])
        text = values.pop("snapshot", None)
        if cached is None and text is None:
            text = conn.execute(_SELECT_SNAPSHOT, {"iid": instance_id, "ver": values["version"]}).scalar()
            if text is None:  # changed (or gone) since the first read
                raise ConcurrentModification(f"process instance {instance_id} was changed concurrently; reload and retry")
        row = ProcessInstance(**values, snapshot="")  # read-only copy: all writes go through the guarded UPDATE
        return row, cached, text, has_incident

    def _run_once(self, instance_id: "str | _ByTask", actor: str | None, command: Callable[[Execution], T],
                  want: list[Execution] | None = None) -> T:
        with self._writer:  # SQLite: one writing command at a time in this process (see __init__)
            with self._sessions() as session:
                row, cached, text, has_incident = self._read(session, instance_id)
                instance_id = row.id
                definition = self._cache.get(row.definition_id, session)
                if cached is not None:
                    workflow, had_waits = cached.workflow, cached.had_waits
                else:
                    workflow = snapshot.load(text, definition.spec, definition.subprocess_specs, self.script_engine)
                    had_waits = has_waits(workflow)
                ex = Execution(session, row, definition, workflow, actor,
                               AuditWriter.continue_chain(row.id, row.audit_seq, row.audit_head), retry=self.retry_policy,
                               had_waits=had_waits, reply=want is not None, had_incident=has_incident)
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
        self._remember(ex)
        if want is not None:
            want.append(ex)
        self._committed(instance_id, jobs, new_wait, ex)
        return result

    def _remember(self, ex: Execution) -> None:
        """Keep the committed workflow for the next command on this instance (see WorkflowCache)."""
        p = ex.persisted
        if p is None or not ex.cacheable or p.values["state"] not in RUNNING_STATES:
            return
        self.workflows.put(ex.row.id, _CachedWorkflow(p.values["version"], ex.workflow, p.values["had_waits"],
                                                      tuple(t.id for t in p.open_tasks)))

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
        session.flush()  # ORM objects the command added are written first (as the ORM statements did)
        conn = session.connection()
        now = utcnow()
        state = ex.new_state or row.state
        if state == "active" and wf.completed:
            state = "completed"
            ex.audit.append("process_completed", actor=ex.actor, data={})
        running = state in RUNNING_STATES
        live = wf.get_tasks(state=_LIVE)  # one walk of the task tree serves the three views below
        variables = to_json_compatible(frontier_data(wf, live))
        activities = self._activities(ex, live) if running else []
        ended = state in ("completed", "terminated")
        new_tasks, gone_ids = self._task_changes(ex, now, state, live)

        values: dict[str, Any] = dict(
            state=state,
            version=row.version + 1,
            snapshot=snapshot.dump(wf),
            variables_json=json.dumps(variables),
            activities_json=json.dumps(activities),
            updated_at=now,
            audit_seq=ex.audit.seq,
            audit_head=ex.audit.prev_hash,
        )
        if ended:
            values["ended_at"] = now
            values["end_reason"] = ex.end_reason
        if insert:
            full = {c.key: getattr(row, c.key) for c in _PI_COLS}
            full.update(values)
            conn.execute(_INSERT_INSTANCE, full)
        else:
            res = conn.execute(_UPDATE_INSTANCE, {"_iid": row.id, "_ver": row.version, **values})
            if res.rowcount != 1:
                raise ConcurrentModification(f"process instance {row.id} was changed concurrently; reload and retry")

        # human tasks: close completed / vanished ones, open new ones
        pg = conn.dialect.name == "postgresql"
        for tid in ex.completed_task_ids:
            res = conn.execute(_PG_COMPLETE_TASK if pg else _COMPLETE_TASK,
                               {"_tid": tid, "_at": now, "_by": ex.completed_by or ex.actor})
            if res.rowcount != 1:
                raise Conflict(f"task {tid} was completed concurrently")
        if gone_ids:
            conn.execute(_CANCEL_TASKS, {"_ids": gone_ids, "_at": now})
        closed = list(ex.completed_task_ids) + list(gone_ids)
        # candidate rows serve inbox queries of open tasks only: keep that index small
        uncleaned = list(gone_ids) if pg else closed
        if uncleaned:
            conn.execute(_DELETE_CANDIDATES, {"ids": uncleaned})
        if new_tasks:
            conn.execute(_INSERT_TASK, [t for t, _ in new_tasks])
            cands = [{"task_id": t["id"], "kind": kind, "value": value} for t, cs in new_tasks for kind, value in cs]
            if cands:
                conn.execute(_INSERT_CANDIDATE, cands)
        for incident in ex.incidents:
            session.add(incident)
        ex.new_message_wait, waiting = sync_waits(
            session, row.id, row.business_key, wf if running else None,
            first_write=insert or ex.had_waits is False)
        for job in ex.jobs:
            session.add(job)
        ex.audit.write(session)

        closed_set = set(closed)
        open_after: list[Any] = [r for tid, r in ex.open_task_rows().items() if tid not in closed_set]
        open_after += [WrittenRow(t) for t, _ in new_tasks]
        ex.persisted = Persisted({**values, "snapshot": None, "had_waits": waiting}, variables, activities, open_after)
        if ex.reply:
            # incidents are created only through ex.incidents (above), so with none open when the
            # instance was read there is nothing else to read back
            found = list(conn.execute(_SELECT_OPEN_INCIDENTS, {"iid": row.id})) if ex.had_incident else []
            found += ex.incidents
            ex.persisted.incidents = sorted(found, key=lambda i: as_utc(i.created_at))

    def _activities(self, ex: Execution, live: list[Task]) -> list[dict[str, Any]]:
        out, seen = [], set()
        for task in live:
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

    def _task_changes(self, ex: Execution, now: datetime, state: str, live: list[Task]):  # noqa: ANN202
        """Diff READY manual tasks in the workflow against open task rows of the instance."""
        open_ids = set(ex.open_task_rows()) - ex.completed_task_ids
        ready: dict[str, Task] = {}
        if state in RUNNING_STATES:
            for task in live:  # the READY manual tasks, in tree order (as get_tasks(READY, manual=True))
                if task.state == TaskState.READY and task.task_spec.manual:
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
        return {k: getattr(row, k) for k in _HT_KEYS}, list(dict.fromkeys(candidates))


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
