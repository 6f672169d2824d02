"""Jobs: durable timers, retries of failed steps and undelivered messages, and their executor.

A job row has a due time. Any number of ``itsmflow serve`` processes run a :class:`JobExecutor`
(driven by APScheduler); each acquires due jobs with a short lease —
``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, a single guarded ``UPDATE`` on SQLite (whose
writers are serialized) — and then applies each job in the transaction of the instance it
touches, deleting the job row in that same transaction, guarded by the lease. A job therefore
takes effect exactly once, even if a lease expires and another process picks the job up.
A timer that fell due while every server was down fires at the next start.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import isodate
from SpiffWorkflow.bpmn.specs.event_definitions.timer import CycleTimerEventDefinition, TimerEventDefinition
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from .errors import Conflict, EngineError, Forbidden, NotFound
from .execution import Execution, Executor
from .messages import prepare_event_start
from .clock import utcnow
from .identity import Principal
from .repository import SpecCache
from .storage.models import Incident, Job, ProcessDefinition

log = logging.getLogger("itsmflow.jobs")


class _JobLost(Exception):
    """Our lease on the job is gone (another process took it over): apply nothing."""


def lease_job(sessions: sessionmaker[Session], job_id: str, owner: str, seconds: int = 60) -> bool:
    now = utcnow()
    with sessions() as session, session.begin():
        res = session.execute(
            update(Job)
            .where(Job.id == job_id, or_(Job.locked_until.is_(None), Job.locked_until < now))
            .values(locked_by=owner, locked_until=now + timedelta(seconds=seconds))
        )
        return res.rowcount == 1


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def next_timer_start(kind: str | None, expression: str | None, after: datetime) -> datetime | None:
    """Next due time of a timer start event with a literal ISO 8601 value."""
    if not expression:
        return None
    expr = expression.strip().strip("'\"")
    try:
        if kind == "timeDate":
            due = isodate.parse_datetime(expr)
            return _aware(due) if _aware(due) > after else None
        if kind == "timeDuration":
            return after + isodate.parse_duration(expr)
        if kind == "timeCycle":
            parts = expr.split("/")
            duration = isodate.parse_duration(parts[-1]) if parts[-1].startswith("P") else None
            start = _aware(isodate.parse_datetime(parts[1])) if len(parts) == 3 else None
            if duration is None:
                return None
            if start is not None and start > after:
                return start
            return after + duration
    except (isodate.ISO8601Error, ValueError, IndexError):
        log.warning("cannot schedule timer start %r", expression)
    return None


def register_timer_starts(session: Session, definition: ProcessDefinition, model: dict[str, Any]) -> None:
    """Replace the timer-start jobs of ``definition.key`` by those of this (latest) version."""
    old = select(ProcessDefinition.id).where(ProcessDefinition.key == definition.key)
    session.execute(delete(Job).where(Job.job_type == "timer-start", Job.definition_id.in_(old)))
    now = utcnow()
    for timer in model.get("timers") or []:
        if not timer.get("is_start") or timer.get("parent"):
            continue
        due = next_timer_start(timer.get("kind"), timer.get("expression"), now)
        if due is None:
            continue
        session.add(Job(
            id=str(uuid.uuid4()), job_type="timer-start", definition_id=definition.id,
            activity_id=timer.get("element_id"), due_at=due,
            payload_json=json.dumps({"kind": timer.get("kind"), "expression": timer.get("expression")}),
            created_at=now,
        ))


class JobExecutor:
    def __init__(self, sessions: sessionmaker[Session], executor: Executor, cache: SpecCache,
                 deliver_message: Callable[[Job], None], *, lock_seconds: int = 60, batch: int = 50,
                 dialect: str = "sqlite") -> None:
        self._sessions = sessions
        self._executor = executor
        self._cache = cache
        self._deliver_message = deliver_message
        self.lock_seconds = lock_seconds
        self.batch = batch
        self.dialect = dialect
        self.node = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._scheduler = None
        # further job types (e.g. "webhook": notification delivery); a handler deletes its job when done
        # and raises to be retried with back-off
        self.handlers: dict[str, Callable[[Job], None]] = {}

    # -- acquisition ----------------------------------------------------------------------
    def acquire(self, limit: int | None = None) -> list[Job]:
        limit = limit or self.batch
        now = utcnow()
        until = now + timedelta(seconds=self.lock_seconds)
        due = and_(Job.due_at <= now, or_(Job.locked_until.is_(None), Job.locked_until < now))
        with self._sessions() as session, session.begin():
            if self.dialect == "postgresql":
                ids = list(session.scalars(
                    select(Job.id).where(due).order_by(Job.due_at).limit(limit).with_for_update(skip_locked=True)))
                if not ids:
                    return []
                session.execute(update(Job).where(Job.id.in_(ids)).values(locked_by=self.node, locked_until=until))
            else:
                candidates = select(Job.id).where(due).order_by(Job.due_at).limit(limit).scalar_subquery()
                session.execute(update(Job).where(Job.id.in_(candidates), due)
                                .values(locked_by=self.node, locked_until=until))
            jobs = list(session.scalars(select(Job).where(Job.locked_by == self.node, Job.locked_until == until)
                                        .order_by(Job.due_at)))
            for j in jobs:
                session.expunge(j)
            return jobs

    def run_due(self, limit: int | None = None) -> int:
        """Acquire and execute due jobs; returns how many were executed."""
        jobs = self.acquire(limit)
        for job in jobs:
            self.execute(job)
        return len(jobs)

    def run_until_idle(self, max_rounds: int = 100) -> int:
        total = 0
        for _ in range(max_rounds):
            n = self.run_due()
            total += n
            if n == 0:
                break
        return total

    # -- execution ------------------------------------------------------------------------
    def execute(self, job: Job) -> None:
        try:
            if job.job_type == "timer":
                self._fire_timer(job)
            elif job.job_type == "retry":
                self._retry(job)
            elif job.job_type == "timer-start":
                self._start_by_timer(job)
            elif job.job_type in ("message", "signal"):
                self._deliver_message(job)
            elif job.job_type in self.handlers:
                self.handlers[job.job_type](job)
            else:
                log.error("unknown job type %s; dropping job %s", job.job_type, job.id)
                self._delete(job)
        except _JobLost:
            log.info("job %s was taken over by another executor", job.id)
        except NotFound:
            self._delete(job)  # its instance or definition is gone
        except Exception as exc:  # noqa: BLE001 - a failing job never kills the executor
            log.exception("job %s (%s) failed", job.id, job.job_type)
            self._release_with_backoff(job, exc)

    def _guard(self, ex: Execution, job: Job) -> None:
        res = ex.session.execute(delete(Job).where(Job.id == job.id, Job.locked_by == self.node))
        if res.rowcount != 1:
            raise _JobLost()

    def _fire_timer(self, job: Job) -> None:
        def command(ex: Execution) -> None:
            if ex.row.state == "suspended":
                # a suspended instance keeps its timer; it is looked at again later
                res = ex.session.execute(update(Job).where(Job.id == job.id, Job.locked_by == self.node).values(
                    locked_by=None, locked_until=None, due_at=utcnow() + timedelta(seconds=30)))
                if res.rowcount != 1:
                    raise _JobLost()
                return
            self._guard(ex, job)
            try:
                task = ex.workflow.get_task_from_id(uuid.UUID(job.spiff_task_id))
            except Exception:  # noqa: BLE001
                task = None
            if task is None or task.state != TaskState.WAITING:
                return  # the timer was cancelled by the process meanwhile
            for d in getattr(task.task_spec.event_definition, "event_definitions", None) or [
                    task.task_spec.event_definition]:
                if isinstance(d, TimerEventDefinition) and not isinstance(d, CycleTimerEventDefinition):
                    task._set_internal_data(event_fired=True)
            task.task_spec._update(task)
            ex.audit.append("timer_fired", actor="engine", activity_id=job.activity_id,
                            data={"due": _aware(job.due_at).isoformat(), "firedAt": utcnow().isoformat(),
                                  "node": self.node})

        self._executor.run(job.instance_id, "engine", command)

    def _retry(self, job: Job) -> None:
        def command(ex: Execution) -> None:
            self._guard(ex, job)
            ex.retry_job = job
            retry_failed_task(ex, job.spiff_task_id, attempt=job.attempts + 1)

        self._executor.run(job.instance_id, "engine", command)

    def _start_by_timer(self, job: Job) -> None:
        definition = self._cache.get(job.definition_id)
        payload = json.loads(job.payload_json)

        def prepare(ex: Execution) -> None:
            self._guard(ex, job)
            nxt = None
            if payload.get("kind") == "timeCycle":
                nxt = next_timer_start("timeCycle", payload.get("expression"), utcnow())
            if nxt is not None:
                ex.jobs.append(Job(id=str(uuid.uuid4()), job_type="timer-start", definition_id=job.definition_id,
                                   activity_id=job.activity_id, due_at=nxt, payload_json=job.payload_json,
                                   created_at=utcnow()))
            prepare_event_start(ex.workflow, lambda d: isinstance(d, TimerEventDefinition))
            for task in list(ex.workflow.event_manager.tasks.values()):
                if task.state == TaskState.WAITING and getattr(task.task_spec, "bpmn_id", None) == job.activity_id:
                    task._set_internal_data(event_fired=True)
                    task.task_spec._update(task)
            ex.audit.append("timer_fired", actor="engine", activity_id=job.activity_id,
                            data={"due": _aware(job.due_at).isoformat(), "start": True})

        self._executor.start(definition, business_key=None, variables={}, actor="engine", prepare=prepare)

    def _delete(self, job: Job) -> None:
        with self._sessions() as session, session.begin():
            session.execute(delete(Job).where(Job.id == job.id))

    def _release_with_backoff(self, job: Job, exc: Exception) -> None:
        attempts = job.attempts + 1
        delay = min(300, 2 ** min(attempts, 8))
        with self._sessions() as session, session.begin():
            session.execute(update(Job).where(Job.id == job.id, Job.locked_by == self.node).values(
                locked_by=None, locked_until=None, attempts=attempts, last_error=str(exc)[:2000],
                due_at=utcnow() + timedelta(seconds=delay)))

    # -- scheduler ------------------------------------------------------------------------
    def start(self, poll_seconds: float = 0.5, housekeeping: Callable[[], Any] | None = None) -> None:
        """Run the executor in the background of this process (APScheduler)."""
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1})
        scheduler.add_job(self._tick, "interval", seconds=poll_seconds, id="itsmflow-jobs")
        if housekeeping is not None:
            scheduler.add_job(housekeeping, "interval", seconds=60, id="itsmflow-housekeeping")
        scheduler.start()
        self._scheduler = scheduler

    def _tick(self) -> None:
        try:
            while self.run_due() >= self.batch:
                pass
        except Exception:  # noqa: BLE001
            log.exception("job executor tick failed")

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None


def retry_failed_task(ex: Execution, spiff_task_id: str | None, *, attempt: int,
                      variables: dict[str, Any] | None = None) -> None:
    """Re-run a failed (ERROR) task; a new failure goes through the retry policy again."""
    task = None
    if spiff_task_id:
        try:
            task = ex.workflow.get_task_from_id(uuid.UUID(spiff_task_id))
        except Exception:  # noqa: BLE001
            task = None
    if task is None or task.state != TaskState.ERROR:
        return
    if variables:
        task.data.update(variables)
    ex.audit.append("step_retried", actor=ex.actor, activity_id=getattr(task.task_spec, "bpmn_id", None),
                    data={"attempt": attempt, "variables": variables or {}})
    try:
        task.run()
    except Exception as exc:  # noqa: BLE001
        ex._record_failure(exc)


class IncidentService:
    """Open incidents, and the operator's retry (``POST /api/incidents/{id}/retry``)."""

    def __init__(self, sessions: sessionmaker[Session], executor: Executor) -> None:
        self._sessions = sessions
        self._executor = executor

    def retry(self, incident_id: str, principal: Principal, variables: dict[str, Any] | None = None) -> None:
        if not principal.is_admin:
            raise Forbidden("only users with the admin role may retry incidents")
        from .variables import check_variables

        variables = check_variables(variables or {})
        with self._sessions() as session:
            incident = session.get(Incident, incident_id)
            if incident is None:
                raise NotFound(f"incident {incident_id} does not exist")
            if incident.state != "open":
                raise Conflict(f"incident {incident_id} is already {incident.state}")
            instance_id, task_id = incident.instance_id, incident.spiff_task_id

        def command(ex: Execution) -> None:
            res = ex.session.execute(update(Incident).where(Incident.id == incident_id, Incident.state == "open")
                                     .values(state="resolved", resolved_at=utcnow()))
            if res.rowcount != 1:
                raise Conflict(f"incident {incident_id} was resolved concurrently")
            if ex.row.state != "active":
                raise Conflict(f"process instance {ex.instance_id} is {ex.row.state}")
            ex.audit.append("incident_resolved", actor=principal.user_id, data={"incidentId": incident_id})
            # an operator's retry is one attempt: a new failure becomes a new incident at once
            ex.retry_job = Job(id="manual", job_type="retry", retries_left=0, attempts=0, due_at=utcnow(),
                               created_at=utcnow())
            retry_failed_task(ex, task_id, attempt=1, variables=variables)

        self._executor.run(instance_id, principal.user_id, command)


__all__ = ["EngineError", "IncidentService", "JobExecutor", "lease_job", "register_timer_starts",
           "retry_failed_task"]
