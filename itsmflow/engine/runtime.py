"""Runtime service: start, inspect, suspend, activate and terminate process instances."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .clock import iso
from .errors import Conflict, Forbidden, InvalidRequest, NotFound
from .textcheck import check_text, valid_id
from .execution import Execution, Executor
from .identity import Principal
from .repository import RepositoryService, SpecCache
from .storage.models import Incident, ProcessInstance
from .variables import check_variables

INSTANCE_STATES = ("active", "suspended", "completed", "terminated")


@dataclass
class IncidentView:
    id: str
    process_instance_id: str
    activity_id: str | None
    message: str
    created_at: datetime
    state: str = "open"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "processInstanceId": self.process_instance_id,
            "activityId": self.activity_id,
            "message": self.message,
            "createdAt": iso(self.created_at),
            "state": self.state,
        }


@dataclass
class InstanceView:
    id: str
    definition_id: str
    definition_key: str
    version: int
    business_key: str | None
    state: str
    variables: dict[str, Any]
    active_activities: list[dict[str, Any]]
    started_at: datetime
    ended_at: datetime | None
    started_by: str | None
    end_reason: str | None
    incidents: list[IncidentView] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "definitionId": self.definition_id,
            "definitionKey": self.definition_key,
            "version": self.version,
            "businessKey": self.business_key,
            "state": self.state,
            "variables": self.variables,
            "activeActivities": self.active_activities,
            "incidents": [i.as_dict() for i in self.incidents],
            "startedAt": iso(self.started_at),
            "endedAt": iso(self.ended_at),
            "startedBy": self.started_by,
            "endReason": self.end_reason,
        }


def instance_view(row: ProcessInstance, incidents: list[Incident] | None = None) -> InstanceView:
    return InstanceView(
        id=row.id,
        definition_id=row.definition_id,
        definition_key=row.definition_key,
        version=row.definition_version,
        business_key=row.business_key,
        state=row.state,
        variables=json.loads(row.variables_json),
        active_activities=json.loads(row.activities_json),
        started_at=row.started_at,
        ended_at=row.ended_at,
        started_by=row.started_by,
        end_reason=row.end_reason,
        incidents=[
            IncidentView(i.id, i.instance_id, i.activity_id, i.message, i.created_at, i.state) for i in incidents or []
        ],
    )


class RuntimeService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        repository: RepositoryService,
        cache: SpecCache,
        executor: Executor,
        *,
        max_variables_bytes: int,
    ) -> None:
        self._sessions = sessions
        self._repository = repository
        self._cache = cache
        self._executor = executor
        self._max_variables_bytes = max_variables_bytes
        # run before an instance is started through this service (the API): each may refuse
        # (ValidationFailed, ...) or return the variables to start with (start form, reserved names)
        self.start_checks: list[Callable[[str, dict[str, Any]], dict[str, Any]]] = []

    # -- commands -------------------------------------------------------------------------
    def start(
        self,
        key: str,
        *,
        business_key: str | None = None,
        variables: dict[str, Any] | None = None,
        principal: Principal | None = None,
    ) -> InstanceView:
        """Start the latest version of process ``key``; runs until the first wait state."""
        check_text(business_key, "businessKey", 255)
        if business_key is not None and not business_key.strip():
            raise InvalidRequest("businessKey must not be empty")
        variables = check_variables(variables or {}, max_bytes=self._max_variables_bytes)
        info = self._repository.latest(key)
        for check in self.start_checks:
            variables = check(info.id, variables)
        definition = self._cache.get(info.id)
        initiator = definition.model.get("start_initiator")  # camunda:initiator="var": var = the starting user
        if initiator and principal is not None:
            variables = {**variables, initiator: principal.user_id}
        instance_id = self._executor.start(
            definition, business_key=business_key, variables=variables, actor=principal.user_id if principal else None
        )
        return self.get(instance_id)

    def suspend(self, instance_id: str, principal: Principal) -> None:
        self._require_admin(principal, "suspend process instances")

        def command(ex: Execution) -> None:
            if ex.row.state != "active":
                raise Conflict(f"process instance {instance_id} is {ex.row.state}; only active instances can be suspended")
            ex.new_state = "suspended"
            ex.audit.append("process_suspended", actor=principal.user_id)

        self._executor.run(instance_id, principal.user_id, command)

    def activate(self, instance_id: str, principal: Principal) -> None:
        self._require_admin(principal, "activate process instances")

        def command(ex: Execution) -> None:
            if ex.row.state != "suspended":
                raise Conflict(f"process instance {instance_id} is {ex.row.state}; only suspended instances can be activated")
            ex.new_state = "active"
            ex.audit.append("process_activated", actor=principal.user_id)

        self._executor.run(instance_id, principal.user_id, command)

    def terminate(self, instance_id: str, principal: Principal, reason: str | None) -> None:
        self._require_admin(principal, "terminate process instances")
        check_text(reason, "reason", 4000)
        if not reason or not str(reason).strip():
            raise InvalidRequest("a reason is required to terminate a process instance")

        def command(ex: Execution) -> None:
            if ex.row.state not in ("active", "suspended"):
                raise Conflict(f"process instance {instance_id} is already {ex.row.state}")
            ex.workflow.cancel()
            ex.new_state = "terminated"
            ex.end_reason = reason
            ex.audit.append("process_terminated", actor=principal.user_id, data={"reason": reason})

        self._executor.run(instance_id, principal.user_id, command)

    # -- queries --------------------------------------------------------------------------
    def get(self, instance_id: str) -> InstanceView:
        with self._sessions() as session:
            row = session.get(ProcessInstance, instance_id) if valid_id(instance_id) else None
            if row is None:
                raise NotFound(f"process instance {instance_id!r} does not exist")
            incidents = session.scalars(
                select(Incident).where(Incident.instance_id == instance_id, Incident.state == "open")
                .order_by(Incident.created_at)
            ).all()
            return instance_view(row, list(incidents))

    def list(
        self,
        *,
        business_key: str | None = None,
        definition_key: str | None = None,
        state: str | None = None,
        page: int = 1,
        size: int = 50,
    ) -> tuple[list[InstanceView], int]:
        if state is not None and state not in INSTANCE_STATES:
            raise InvalidRequest(f"state must be one of {', '.join(INSTANCE_STATES)}")
        for name, value in (("businessKey", business_key), ("definitionKey", definition_key)):
            if value is not None and not valid_id(value):
                return [], 0
        with self._sessions() as session:
            q = select(ProcessInstance)
            if business_key is not None:
                q = q.where(ProcessInstance.business_key == business_key)
            if definition_key is not None:
                q = q.where(ProcessInstance.definition_key == definition_key)
            if state is not None:
                q = q.where(ProcessInstance.state == state)
            total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = session.scalars(
                q.order_by(ProcessInstance.started_at.desc(), ProcessInstance.id).offset((page - 1) * size).limit(size)
            ).all()
            return [instance_view(r) for r in rows], total

    def incidents(self, instance_id: str | None = None) -> list[IncidentView]:
        with self._sessions() as session:
            q = select(Incident).where(Incident.state == "open")
            if instance_id:
                q = q.where(Incident.instance_id == instance_id)
            return [
                IncidentView(i.id, i.instance_id, i.activity_id, i.message, i.created_at, i.state)
                for i in session.scalars(q.order_by(Incident.created_at))
            ]

    @staticmethod
    def _require_admin(principal: Principal, what: str) -> None:
        if not principal.is_admin:
            raise Forbidden(f"only users with the admin role may {what}")
