"""Notifications (the I of RACI): a persisted outbox of messages for users.

When a task is created and when it is completed, every user holding one of the task's *informed*
roles gets one ``notification`` row, written in the same transaction as the task change (so a
notification exists exactly when the change does). Users read theirs with ``GET /api/notifications``.

With ``notification_webhook_url`` set, each notification is also POSTed to the webhook as JSON by the
job executor (job type ``webhook``): a 2xx answer marks it delivered; anything else is retried with
exponential back-off up to ``webhook_max_attempts`` times, then the notification is marked ``failed``.
With ``notification_webhook_secret`` the body is signed: ``X-Itsmflow-Signature: sha256=<hex hmac>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from .clock import iso, utcnow
from .directory import Directory
from .errors import NotFound
from .execution import Execution
from .identity import Principal
from .rules import RulesStore
from .storage.models import HumanTask, Job, Notification
from .textcheck import valid_id

log = logging.getLogger("itsmflow.notifications")

WEBHOOK_JOB = "webhook"


@dataclass
class NotificationView:
    id: str
    user_id: str
    type: str
    process_instance_id: str | None
    task_id: str | None
    activity_id: str | None
    definition_key: str | None
    business_key: str | None
    message: str
    read: bool
    created_at: datetime
    delivery_state: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": iso(self.created_at),
            "type": self.type,
            "userId": self.user_id,
            "processInstanceId": self.process_instance_id,
            "taskId": self.task_id,
            "activityId": self.activity_id,
            "definitionKey": self.definition_key,
            "businessKey": self.business_key,
            "message": self.message,
            "read": self.read,
            "deliveryState": self.delivery_state,
        }


def _view(r: Notification) -> NotificationView:
    return NotificationView(r.id, r.user_id, r.type, r.instance_id, r.task_id, r.activity_id, r.definition_key,
                            r.business_key, r.message, bool(r.read), r.created_at, r.delivery_state)


class WebhookFailed(Exception):
    """The webhook did not accept a notification; the job executor retries with back-off."""


class NotificationService:
    def __init__(self, sessions: sessionmaker[Session], directory: Directory, rules: RulesStore, *,
                 webhook_url: str | None = None, webhook_secret: str | None = None,
                 webhook_timeout_seconds: float = 5.0, webhook_max_attempts: int = 5) -> None:
        self._sessions = sessions
        self.directory = directory
        self._rules = rules
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.webhook_timeout_seconds = webhook_timeout_seconds
        self.webhook_max_attempts = max(1, webhook_max_attempts)

    # -- hooks (run inside the command's transaction) ---------------------------------------
    def informed_users(self, ex: Execution | None, definition_id: str, task_key: str) -> list[str]:
        rules = self._rules.get(definition_id, ex.session if ex is not None else None)
        entry = rules.entry(task_key) if rules else None
        if entry is None or not entry.informed:
            return []
        users: dict[str, None] = {}
        for role in entry.informed:
            for user in sorted(self.directory.users_with_role(role), key=lambda u: u.id):
                users.setdefault(user.id, None)
        return list(users)

    def task_created(self, ex: Execution, row: HumanTask) -> None:
        """``Executor.on_task_created`` hook."""
        users = self.informed_users(ex, row.definition_id, row.task_definition_key)
        if users:
            self.add(ex, users, "task_created", row.instance_id, row.id, row.task_definition_key,
                     row.definition_key, row.business_key,
                     f"New task '{row.name}' in {_case(row.definition_key, row.business_key)}")

    def task_completed(self, ex: Execution, task: Any, completed_by: str) -> None:
        """``TaskService.completion_listeners`` hook."""
        users = self.informed_users(ex, task.definition_id, task.task_definition_key)
        if users:
            self.add(ex, users, "task_completed", task.process_instance_id, task.id, task.task_definition_key,
                     task.definition_key, task.business_key,
                     f"Task '{task.name}' in {_case(task.definition_key, task.business_key)} "
                     f"was completed by {completed_by}")

    def signoff_rejected(self, ex: Execution, task: Any, submitter: str | None, reason: str) -> None:
        """``TaskService.signoff_rejected_listeners`` hook: tell the submitter their result came back."""
        if submitter:
            self.add(ex, [submitter], "signoff_rejected", task.process_instance_id, task.id, task.task_definition_key,
                     task.definition_key, task.business_key,
                     f"Your result for task '{task.name}' in {_case(task.definition_key, task.business_key)} was "
                     f"not signed off: {reason}")

    def add(self, ex: Execution, users: list[str], type_: str, instance_id: str | None, task_id: str | None,
            activity_id: str | None, definition_key: str | None, business_key: str | None, message: str) -> None:
        now = utcnow()
        for user_id in users:
            row = Notification(
                id=str(uuid.uuid4()), user_id=user_id, type=type_, instance_id=instance_id, task_id=task_id,
                activity_id=activity_id, definition_key=definition_key, business_key=business_key,
                message=message, read=False, created_at=now,
                delivery_state="pending" if self.webhook_url else "none", delivery_attempts=0,
            )
            ex.session.add(row)
            if self.webhook_url:
                ex.jobs.append(Job(id=str(uuid.uuid4()), job_type=WEBHOOK_JOB, instance_id=None, due_at=now,
                                   payload_json=json.dumps({"notificationId": row.id}), created_at=now))

    # -- queries ----------------------------------------------------------------------------
    def list(self, user_id: str, *, unread: bool | None = None, page: int = 1,
             size: int = 50) -> tuple[list[NotificationView], int]:
        q = select(Notification).where(Notification.user_id == user_id)
        if unread:
            q = q.where(Notification.read.is_(False))
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = session.scalars(q.order_by(Notification.created_at.desc(), Notification.id)
                                   .offset((page - 1) * size).limit(size)).all()
            return [_view(r) for r in rows], total

    def mark_read(self, notification_id: str, principal: Principal) -> None:
        with self._sessions() as session, session.begin():
            row = session.get(Notification, notification_id) if valid_id(notification_id, 36) else None
            if row is None or row.user_id != principal.user_id:
                raise NotFound(f"notification {notification_id!r} does not exist")
            row.read = True

    # -- webhook delivery (job executor) ------------------------------------------------------
    def payload(self, row: Notification) -> dict[str, Any]:
        return _view(row).as_dict()

    def deliver(self, job: Job) -> None:
        """Job handler for ``webhook`` jobs (leased by the job executor)."""
        notification_id = json.loads(job.payload_json or "{}").get("notificationId")
        with self._sessions() as session:
            row = session.get(Notification, notification_id) if notification_id else None
            body = json.dumps(self.payload(row), separators=(",", ":")).encode() if row is not None else None
        if row is None or not self.webhook_url:
            self._finish(job, None, "failed" if row is not None else None, "no webhook configured")
            return
        error = self._post(body)
        if error is None:
            self._finish(job, notification_id, "delivered", None)
            return
        attempts = job.attempts + 1
        if attempts >= self.webhook_max_attempts:
            log.warning("notification %s: webhook failed %d times, giving up: %s", notification_id, attempts, error)
            self._finish(job, notification_id, "failed", error, attempts)
            return
        with self._sessions() as session, session.begin():
            session.execute(update(Notification).where(Notification.id == notification_id)
                            .values(delivery_attempts=attempts, last_error=error[:2000]))
        raise WebhookFailed(error)  # the job executor releases the job with back-off

    def _post(self, body: bytes) -> str | None:
        import httpx

        headers = {"Content-Type": "application/json", "User-Agent": "itsmflow"}
        if self.webhook_secret:
            digest = hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Itsmflow-Signature"] = f"sha256={digest}"
        try:
            resp = httpx.post(self.webhook_url, content=body, headers=headers, timeout=self.webhook_timeout_seconds)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= resp.status_code < 300:
            return None
        return f"HTTP {resp.status_code}"

    def _finish(self, job: Job, notification_id: str | None, state: str | None, error: str | None,
                attempts: int | None = None) -> None:
        with self._sessions() as session, session.begin():
            session.execute(delete(Job).where(Job.id == job.id, Job.locked_by == job.locked_by))
            if notification_id and state:
                values: dict[str, Any] = {"delivery_state": state, "last_error": error[:2000] if error else None}
                if state == "delivered":
                    values["delivered_at"] = utcnow()
                    values["delivery_attempts"] = job.attempts + 1
                elif attempts is not None:
                    values["delivery_attempts"] = attempts
                session.execute(update(Notification).where(Notification.id == notification_id).values(**values))


def _case(definition_key: str | None, business_key: str | None) -> str:
    return f"{definition_key} {business_key}" if business_key else f"{definition_key}"
