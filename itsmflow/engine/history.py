"""History service: the append-only, hash-chained audit trail.

Every state change of an instance (and every deployment) appends one event to the chain of its
scope (the instance id, or ``"repository"``). Each event's hash covers its own content and the
previous event's hash, so changing, deleting or reordering a stored row is detected by
:meth:`HistoryService.verify`. The ``(scope, seq)`` unique constraint makes a forked chain
impossible even with concurrent writers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from .clock import iso, utcnow
from .errors import NotFound
from .textcheck import valid_id
from .storage.models import HistoryEvent, ProcessInstance
from .variables import to_json_compatible

GENESIS = "0" * 64
_INSERT_EVENTS = insert(HistoryEvent.__table__)
REPOSITORY_SCOPE = "repository"


def _iso(at: datetime) -> str:
    return iso(at)  # type: ignore[return-value]


def event_hash(prev_hash: str, scope: str, seq: int, at: datetime, actor: str | None, type_: str,
               activity_id: str | None, task_id: str | None, data_json: str) -> str:
    payload = json.dumps(
        [prev_hash, scope, seq, _iso(at), actor, type_, activity_id, task_id, data_json],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class AuditEvent:
    seq: int
    at: datetime
    actor: str | None
    type: str
    activity_id: str | None
    task_id: str | None
    data: dict[str, Any]
    hash: str
    prev_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": _iso(self.at),
            "actor": self.actor,
            "type": self.type,
            "activityId": self.activity_id,
            "taskId": self.task_id,
            "data": self.data,
            "hash": self.hash,
            "prevHash": self.prev_hash,
        }


@dataclass
class VerifyResult:
    scope: str
    ok: bool
    events: int
    first_bad_seq: int | None = None
    reason: str | None = None


class AuditWriter:
    """Builds the next events of one scope's chain; :meth:`write` adds them to a session.

    Events are hashed as they are appended but only written at the end of the command, after the
    instance row's optimistic-lock check, so a losing concurrent writer never touches the chain.
    """

    def __init__(self, scope: str, seq: int, prev_hash: str) -> None:
        self.scope = scope
        self.seq = seq
        self.prev_hash = prev_hash
        self._rows: list[dict[str, Any]] = []

    @classmethod
    def new_chain(cls, scope: str) -> "AuditWriter":
        return cls(scope, 0, GENESIS)

    @classmethod
    def continue_chain(cls, scope: str, seq: int, head: str | None) -> "AuditWriter":
        return cls(scope, seq, head or GENESIS)

    @classmethod
    def for_scope(cls, session: Session, scope: str) -> "AuditWriter":
        last = session.execute(
            select(HistoryEvent.seq, HistoryEvent.hash)
            .where(HistoryEvent.scope == scope)
            .order_by(HistoryEvent.seq.desc())
            .limit(1)
        ).first()
        return cls(scope, last[0], last[1]) if last else cls.new_chain(scope)

    def append(self, type_: str, *, actor: str | None, activity_id: str | None = None,
               task_id: str | None = None, data: dict[str, Any] | None = None,
               at: datetime | None = None) -> dict[str, Any]:
        at = at or utcnow()
        data_json = json.dumps(to_json_compatible(data or {}), sort_keys=True, separators=(",", ":"))
        self.seq += 1
        digest = event_hash(self.prev_hash, self.scope, self.seq, at, actor, type_, activity_id, task_id, data_json)
        row = {"scope": self.scope, "seq": self.seq, "at": at, "actor": actor, "type": type_,
               "activity_id": activity_id, "task_id": task_id, "data_json": data_json,
               "prev_hash": self.prev_hash, "hash": digest}
        self._rows.append(row)
        self.prev_hash = digest
        return row

    def write(self, session: Session) -> None:
        """Insert the pending events in one Core statement (executemany, no ORM unit of work)."""
        if self._rows:
            session.connection().execute(_INSERT_EVENTS, self._rows)
        self._rows = []


class HistoryService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def events(self, instance_id: str) -> list[AuditEvent]:
        with self._sessions() as session:
            if not valid_id(instance_id) or session.get(ProcessInstance, instance_id) is None:
                raise NotFound(f"process instance {instance_id} does not exist")
            return [self._to_event(r) for r in self._rows(session, instance_id)]

    def repository_events(self) -> list[AuditEvent]:
        with self._sessions() as session:
            return [self._to_event(r) for r in self._rows(session, REPOSITORY_SCOPE)]

    def verify(self, scope: str | None = None) -> list[VerifyResult]:
        """Recompute the hash chain of one scope (or of every scope); report the first broken link."""
        with self._sessions() as session:
            scopes = [scope] if scope else list(session.scalars(select(HistoryEvent.scope).distinct()))
            return [self._verify_scope(session, s) for s in scopes]

    def count(self, scope: str) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count()).where(HistoryEvent.scope == scope)) or 0

    @staticmethod
    def _rows(session: Session, scope: str) -> list[HistoryEvent]:
        return list(session.scalars(select(HistoryEvent).where(HistoryEvent.scope == scope).order_by(HistoryEvent.seq)))

    @staticmethod
    def _to_event(r: HistoryEvent) -> AuditEvent:
        return AuditEvent(r.seq, r.at, r.actor, r.type, r.activity_id, r.task_id, json.loads(r.data_json),
                          r.hash, r.prev_hash)

    def _verify_scope(self, session: Session, scope: str) -> VerifyResult:
        prev, expected_seq = GENESIS, 1
        rows = self._rows(session, scope)
        instance = session.get(ProcessInstance, scope) if scope != REPOSITORY_SCOPE else None
        if instance is not None and (instance.audit_seq != len(rows) or (rows and rows[-1].hash != instance.audit_head)):
            return VerifyResult(scope, False, len(rows), instance.audit_seq,
                                f"trail has {len(rows)} events but the instance recorded {instance.audit_seq}")
        for r in rows:
            if r.seq != expected_seq:
                return VerifyResult(scope, False, len(rows), r.seq, f"sequence gap: expected {expected_seq}, found {r.seq}")
            if r.prev_hash != prev:
                return VerifyResult(scope, False, len(rows), r.seq, "previous-hash link broken")
            digest = event_hash(prev, scope, r.seq, r.at, r.actor, r.type, r.activity_id, r.task_id, r.data_json)
            if digest != r.hash:
                return VerifyResult(scope, False, len(rows), r.seq, "content does not match its hash")
            prev, expected_seq = r.hash, expected_seq + 1
        return VerifyResult(scope, True, len(rows))
