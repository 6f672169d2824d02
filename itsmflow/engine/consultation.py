"""Consultation (the C of RACI): opinions recorded on a task by holders of its consulted roles.

- ``record``: a user holding a consulted role records an opinion on an open task (one row per role
  they record it for), with an audit event in the instance's trail.
- With ``consultation: required`` (the default when a task has consulted roles) the task cannot be
  completed until every consulted role has at least one opinion: completion fails with
  :class:`ConsultationPending` (HTTP 409) naming the missing roles. ``advisory`` records opinions
  without blocking.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .clock import iso, utcnow
from .errors import Conflict, Forbidden
from .execution import Execution, Executor
from .identity import Principal
from .rules import RulesStore
from .storage.models import Consultation, HumanTask
from .textcheck import check_text

MAX_OPINION = 4000


class ConsultationPending(Conflict):
    """Completion refused: required consultations are missing."""

    def __init__(self, task_id: str, missing: list[str]) -> None:
        self.missing = list(missing)
        super().__init__(
            f"consultation pending: {', '.join(missing)} — task {task_id} cannot be completed until every "
            "consulted role has recorded an opinion (POST /api/tasks/{id}/consultations)"
        )


@dataclass
class ConsultationView:
    id: str
    task_id: str
    process_instance_id: str
    role: str
    user_id: str
    opinion: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "taskId": self.task_id, "processInstanceId": self.process_instance_id,
                "role": self.role, "userId": self.user_id, "opinion": self.opinion, "at": iso(self.created_at)}


def _view(r: Consultation) -> ConsultationView:
    return ConsultationView(r.id, r.task_id, r.instance_id, r.role, r.user_id, r.opinion, r.created_at)


class ConsultationService:
    def __init__(self, sessions: sessionmaker[Session], executor: Executor, tasks: Any, rules: RulesStore) -> None:
        self._sessions = sessions
        self._executor = executor
        self._tasks = tasks
        self._rules = rules

    def consulted_roles(self, definition_id: str, task_key: str) -> tuple[tuple[str, ...], str | None]:
        rules = self._rules.get(definition_id)
        entry = rules.entry(task_key) if rules else None
        if entry is None:
            return (), None
        return entry.consulted, entry.consultation

    def list(self, task_id: str) -> list[ConsultationView]:
        self._tasks.get(task_id)  # 404 when unknown
        with self._sessions() as session:
            rows = session.scalars(select(Consultation).where(Consultation.task_id == task_id)
                                   .order_by(Consultation.created_at, Consultation.id))
            return [_view(r) for r in rows]

    def record(self, task_id: str, principal: Principal, opinion: str, role: str | None = None) -> list[ConsultationView]:
        check_text(opinion, "opinion", MAX_OPINION, required=True)
        check_text(role, "role", 255)
        task = self._tasks.get(task_id)
        if task.state != "open":
            raise Conflict(f"task {task_id} is {task.state}: opinions can only be recorded on open tasks")
        consulted, _ = self.consulted_roles(task.definition_id, task.task_definition_key)
        if not consulted:
            raise Conflict(f"task {task_id} ({task.name}) has no consulted roles")
        held = [r for r in consulted if r in principal.roles]
        if role is not None:
            if role not in consulted:
                raise Forbidden(f"role {role!r} is not consulted on task {task_id}; consulted: {', '.join(consulted)}")
            if role not in principal.roles:
                raise Forbidden(f"user {principal.user_id} does not hold role {role!r}")
            held = [role]
        if not held:
            raise Forbidden(f"user {principal.user_id} holds none of the roles consulted on task {task_id}: "
                            f"{', '.join(consulted)}")
        now = utcnow()
        rows = [Consultation(id=str(uuid.uuid4()), task_id=task_id, instance_id=task.process_instance_id, role=r,
                             user_id=principal.user_id, opinion=opinion, created_at=now) for r in held]

        def command(ex: Execution) -> None:
            if ex.row.state != "active":
                raise Conflict(f"process instance {ex.instance_id} is {ex.row.state}")
            state = ex.session.scalar(select(HumanTask.state).where(HumanTask.id == task_id))
            if state != "open":
                raise Conflict(f"task {task_id} is {state}: opinions can only be recorded on open tasks")
            for row in rows:
                ex.session.add(row)
            ex.audit.append("consultation_recorded", actor=principal.user_id, activity_id=task.task_definition_key,
                            task_id=task_id, data={"roles": held, "opinion": opinion})

        self._executor.run(task.process_instance_id, principal.user_id, command)
        return [_view(r) for r in rows]

    # -- completion check -----------------------------------------------------------------
    def completion_check(self, ex: Execution, task: Any, principal: Principal, values: dict[str, Any]) -> dict[str, Any]:
        rules = self._rules.get(task.definition_id, ex.session)
        entry = rules.entry(task.task_definition_key) if rules else None
        required = entry.required_consultations if entry else ()
        if required:
            recorded = set(ex.session.scalars(select(Consultation.role).where(Consultation.task_id == task.id)))
            missing = [r for r in required if r not in recorded]
            if missing:
                raise ConsultationPending(task.id, missing)
        return values
