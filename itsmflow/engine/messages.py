"""Message and signal routing between instances (the BPMN message flows of a collaboration).

Routing rules, following Camunda 7's ``correlateAll`` semantics:

1. A message goes to every instance waiting for it in a catch event or receive task (an
   ``event_subscription`` row) whose correlation values match; when the message carries a
   business key, the instance's business key must match too.
2. If no instance waits, a new instance is started for every definition (latest version)
   whose message start event catches it.
3. If neither, a message with ``ttlSeconds`` is buffered and delivered when a matching
   subscription appears (thrown messages are always buffered, for ``default_message_ttl``).

Messages thrown by instances are written to the ``job`` table (a durable outbox) in the sender's
transaction and delivered right after it commits; each delivery writes a receipt in the
receiver's transaction, so a crash between the two repeats nothing. External messages with a
``messageId`` are idempotent: the receipt holds the first outcome and a repeat returns it.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

from SpiffWorkflow.bpmn.util import BpmnEvent
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .errors import Conflict, InvalidRequest, NotFound
from .execution import Execution, Executor, from_storable, to_storable
from .clock import utcnow
from .repository import SpecCache
from .storage.models import BufferedMessage, EventSubscription, Job, MessageReceipt, ProcessDefinition
from .variables import check_variables
from .waits import canonical_correlation

log = logging.getLogger("itsmflow.messages")

RESULT_VAR = "_message"


@dataclass
class Message:
    name: str
    variables: dict[str, Any] = field(default_factory=dict)
    business_key: str | None = None
    correlation: dict[str, Any] | None = None
    message_id: str | None = None
    source: str = "api"


@dataclass
class CorrelationResult:
    correlated: list[dict[str, str]] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    duplicate: bool = False
    buffered: bool = False
    expires_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.buffered:
            return {"buffered": True, "expiresAt": self.expires_at, "duplicate": self.duplicate}
        return {"correlated": self.correlated, "started": self.started, "duplicate": self.duplicate}


class _Undelivered(Exception):
    """The subscription was stale: the instance no longer waits for this message."""


class MessageService:
    def __init__(self, sessions: sessionmaker[Session], executor: Executor, cache: SpecCache,
                 *, default_ttl_seconds: int = 3600, max_variables_bytes: int = 1024 * 1024) -> None:
        self._sessions = sessions
        self._executor = executor
        self._cache = cache
        self._default_ttl = default_ttl_seconds
        self._max_bytes = max_variables_bytes
        self._local = threading.local()
        executor.after_commit.append(self._after_commit)

    # -- public API -----------------------------------------------------------------------
    def correlate(self, name: str, *, business_key: str | None = None,
                  correlation_keys: dict[str, Any] | None = None, variables: dict[str, Any] | None = None,
                  message_id: str | None = None, ttl_seconds: int | None = None,
                  actor: str | None = None) -> CorrelationResult:
        """Deliver an external message (``POST /api/messages``)."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest("messageName must be a non-empty string")
        if ttl_seconds is not None and (not isinstance(ttl_seconds, int) or ttl_seconds < 0):
            raise InvalidRequest("ttlSeconds must be a non-negative integer")
        variables = check_variables(variables or {}, max_bytes=self._max_bytes)
        if correlation_keys is not None and not isinstance(correlation_keys, dict):
            raise InvalidRequest("correlationKeys must be an object")
        if message_id is not None:
            previous = self._receipt(message_id)
            if previous is not None:
                previous.duplicate = True
                return previous
        msg = Message(name, variables, business_key, correlation_keys or None, message_id, source=actor or "api")
        result = self._route(msg, receipt_prefix=message_id)
        if not result.correlated and not result.started:
            if ttl_seconds:
                result = self._buffer(msg, ttl_seconds)
            else:
                raise NotFound(f"no process instance or definition is waiting for message {name!r}"
                               + (f" with business key {business_key!r}" if business_key else "")
                               + (" and those correlation keys" if correlation_keys else ""))
        if message_id is not None:
            result = self._store_receipt(message_id, name, result)
        self._drain()
        return result

    def signal(self, name: str, variables: dict[str, Any] | None = None, actor: str | None = None) -> int:
        """Broadcast a signal to every waiting instance and signal start event; returns how many."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest("name must be a non-empty string")
        variables = check_variables(variables or {}, max_bytes=self._max_bytes)
        count = self._broadcast(name, variables, source=actor or "api")
        self._drain()
        return count

    def process_leased_job(self, job: Job) -> None:
        """Deliver an outbox job the job executor has leased (it was not delivered at once)."""
        self._deliver_outbox_job(job, leased=True)
        self._drain()

    def purge_expired(self) -> int:
        with self._sessions() as session, session.begin():
            return session.execute(delete(BufferedMessage).where(BufferedMessage.expires_at <= utcnow())).rowcount

    # -- after-commit hook ----------------------------------------------------------------
    def _after_commit(self, instance_id: str, jobs: list[Job], new_message_wait: bool = True) -> None:
        queue = self._queue()
        queue.extend(j for j in jobs if j.job_type in ("message", "signal"))
        if new_message_wait:
            queue.append(("buffered", instance_id))
        if not getattr(self._local, "draining", False):
            self._drain()

    def _queue(self) -> list:
        if not hasattr(self._local, "queue"):
            self._local.queue = []
        return self._local.queue

    def _drain(self) -> None:
        """Deliver queued work iteratively (a reply to a message is queued, not recursed into)."""
        if getattr(self._local, "draining", False):
            return
        self._local.draining = True
        try:
            queue = self._queue()
            while queue:
                item = queue.pop(0)
                try:
                    if isinstance(item, tuple):
                        self._deliver_buffered(item[1])
                    else:
                        self._deliver_outbox_job(item)
                except Exception:  # noqa: BLE001 - left to the job executor's retry
                    log.exception("delivery failed; the job executor will retry")
        finally:
            self._local.draining = False

    # -- routing --------------------------------------------------------------------------
    def _deliver_outbox_job(self, job: Job, leased: bool = False) -> None:
        payload = json.loads(job.payload_json)
        variables = from_storable(payload.get("variables") or {})
        if job.job_type == "signal":
            if leased or self._claim_job(job.id):
                self._broadcast(payload["name"], variables, source=payload.get("source") or "engine",
                                receipt_prefix=job.id)
                self._delete_job(job.id)
            return
        msg = Message(payload["name"], variables, payload.get("businessKey"), payload.get("correlation"),
                      source=payload.get("source") or "engine")
        if not leased and not self._claim_job(job.id):
            return
        result = self._route(msg, receipt_prefix=job.id)
        if not result.correlated and not result.started:
            self._buffer(msg, self._default_ttl)
        self._delete_job(job.id)

    def _route(self, msg: Message, *, receipt_prefix: str | None) -> CorrelationResult:
        result = CorrelationResult()
        for sub in self._matching_subscriptions(msg):
            receipt = f"{receipt_prefix}:{sub.instance_id}:{sub.spiff_task_id}" if receipt_prefix else None
            try:
                self._deliver(sub.instance_id, sub.spiff_task_id, msg.name, "message", msg.variables, receipt,
                              msg.source)
            except (_Undelivered, NotFound):
                continue
            except _AlreadyDelivered:
                pass
            result.correlated.append({"processInstanceId": sub.instance_id, "activityId": sub.activity_id})
        if result.correlated:
            return result
        for sub in self._start_subscriptions("message", msg.name):
            receipt = f"{receipt_prefix}:start:{sub.definition_key}" if receipt_prefix else None
            instance_id = self._start_by_event(sub, "message", msg, receipt)
            if instance_id:
                result.started.append(instance_id)
        return result

    def _matching_subscriptions(self, msg: Message) -> list[EventSubscription]:
        ckey, _ = canonical_correlation(msg.correlation)
        q = select(EventSubscription).where(
            EventSubscription.event_type == "message", EventSubscription.event_name == msg.name,
            EventSubscription.kind == "catch",
        )
        if ckey is not None:
            q = q.where(EventSubscription.correlation_key == ckey)
            if msg.source == "api" and msg.business_key is not None:
                q = q.where(EventSubscription.business_key == msg.business_key)
        elif msg.business_key is not None:
            # business-key fallback when the message defines no correlation values
            q = q.where(EventSubscription.business_key == msg.business_key)
        with self._sessions() as session:
            rows = list(session.scalars(q.order_by(EventSubscription.created_at)))
            for r in rows:
                session.expunge(r)
            return rows

    def _start_subscriptions(self, event_type: str, name: str) -> list[EventSubscription]:
        with self._sessions() as session:
            rows = list(session.scalars(select(EventSubscription).where(
                EventSubscription.event_type == event_type, EventSubscription.event_name == name,
                EventSubscription.kind == "start",
            ).order_by(EventSubscription.definition_key)))
            for r in rows:
                session.expunge(r)
            return rows

    def _deliver(self, instance_id: str, spiff_task_id: str, name: str, event_type: str,
                 variables: dict[str, Any], receipt: str | None, source: str) -> None:
        def command(ex: Execution) -> None:
            if receipt is not None:
                if ex.session.get(MessageReceipt, receipt) is not None:
                    raise _AlreadyDelivered()
                ex.session.add(MessageReceipt(message_id=receipt, message_name=name, result_json="{}",
                                              created_at=utcnow()))
            if ex.row.state != "active":
                raise _Undelivered()
            deliver_event(ex, spiff_task_id, name, event_type, variables, source)

        self._executor.run(instance_id, "engine", command)

    def _start_by_event(self, sub: EventSubscription, event_type: str, msg: Message,
                        receipt: str | None) -> str | None:
        definition = self._cache.get(sub.definition_id)

        def prepare(ex: Execution) -> None:
            if receipt is not None:
                if ex.session.get(MessageReceipt, receipt) is not None:
                    raise _AlreadyDelivered()
                ex.session.add(MessageReceipt(message_id=receipt, message_name=msg.name, result_json="{}",
                                              created_at=utcnow()))
            prepare_event_start(ex.workflow, lambda d: _matching_definition(d, msg.name) is not None)
            waiting = [t for t in ex.workflow.event_manager.tasks.values()
                       if t.state == TaskState.WAITING
                       and _matching_definition(t.task_spec.event_definition, msg.name) is not None]
            if not waiting:
                raise _Undelivered()
            deliver_event(ex, str(waiting[0].id), msg.name, event_type, msg.variables, msg.source)

        try:
            return self._executor.start(definition, business_key=msg.business_key, variables={}, actor="engine",
                                        prepare=prepare)
        except (_Undelivered, _AlreadyDelivered):
            return None
        except Conflict:
            # business key already running for that definition: start without it rather than lose the message
            return self._executor.start(definition, business_key=None, variables={}, actor="engine", prepare=prepare)

    def _broadcast(self, name: str, variables: dict[str, Any], *, source: str,
                   receipt_prefix: str | None = None) -> int:
        count = 0
        with self._sessions() as session:
            subs = list(session.scalars(select(EventSubscription).where(
                EventSubscription.event_type == "signal", EventSubscription.event_name == name,
                EventSubscription.kind == "catch")))
            for s in subs:
                session.expunge(s)
        seen: set[str] = set()
        for sub in subs:
            if sub.instance_id in seen:
                continue  # one delivery catches every waiting task of that instance
            seen.add(sub.instance_id)
            receipt = f"{receipt_prefix}:{sub.instance_id}" if receipt_prefix else None
            try:
                self._deliver(sub.instance_id, sub.spiff_task_id, name, "signal", variables, receipt, source)
                count += 1
            except (_Undelivered, NotFound, _AlreadyDelivered):
                continue
        for sub in self._start_subscriptions("signal", name):
            receipt = f"{receipt_prefix}:start:{sub.definition_key}" if receipt_prefix else None
            if self._start_by_event(sub, "signal", Message(name, variables, source=source), receipt):
                count += 1
        return count

    # -- buffering ------------------------------------------------------------------------
    def _buffer(self, msg: Message, ttl_seconds: int) -> CorrelationResult:
        ckey, cjson = canonical_correlation(msg.correlation)
        expires = utcnow() + timedelta(seconds=ttl_seconds)
        with self._sessions() as session, session.begin():
            session.add(BufferedMessage(
                id=str(uuid.uuid4()), message_name=msg.name, message_id=msg.message_id,
                business_key=msg.business_key, correlation_key=ckey, correlation_json=cjson,
                variables_json=json.dumps(to_storable(msg.variables), default=str), source=msg.source,
                created_at=utcnow(), expires_at=expires,
            ))
        return CorrelationResult(buffered=True, expires_at=expires.isoformat())

    def _deliver_buffered(self, instance_id: str) -> None:
        """A new subscription may be waiting for a buffered message: deliver it (once)."""
        now = utcnow()
        with self._sessions() as session:
            pairs = session.execute(
                select(BufferedMessage, EventSubscription)
                .join(EventSubscription, EventSubscription.event_name == BufferedMessage.message_name)
                .where(
                    EventSubscription.instance_id == instance_id,
                    EventSubscription.event_type == "message",
                    BufferedMessage.expires_at > now,
                    or_(BufferedMessage.correlation_key.is_(None),
                        BufferedMessage.correlation_key == EventSubscription.correlation_key),
                    or_(BufferedMessage.business_key.is_(None),
                        BufferedMessage.business_key == EventSubscription.business_key,
                        BufferedMessage.correlation_key.is_not(None)),
                )
                .order_by(BufferedMessage.created_at)
            ).all()
            pairs = [(b, s) for b, s in pairs]
            for b, s in pairs:
                session.expunge(b)
                session.expunge(s)
        used_tasks: set[str] = set()
        for buffered, sub in pairs:
            if sub.spiff_task_id in used_tasks:
                continue
            variables = from_storable(json.loads(buffered.variables_json))

            def command(ex: Execution, buffered=buffered, sub=sub, variables=variables) -> None:
                res = ex.session.execute(delete(BufferedMessage).where(BufferedMessage.id == buffered.id))
                if res.rowcount != 1:
                    raise _Undelivered()  # somebody else consumed it
                deliver_event(ex, sub.spiff_task_id, buffered.message_name, "message", variables,
                              buffered.source or "api")
                ex.audit.append("buffered_message_delivered", actor="engine", activity_id=sub.activity_id,
                                data={"messageId": buffered.message_id, "bufferedAt": buffered.created_at})

            try:
                self._executor.run(instance_id, "engine", command)
                used_tasks.add(sub.spiff_task_id)
            except (_Undelivered, NotFound):
                continue

    # -- receipts and job claims ------------------------------------------------------------
    def _receipt(self, message_id: str) -> CorrelationResult | None:
        with self._sessions() as session:
            row = session.get(MessageReceipt, f"api:{message_id}")
            if row is None:
                return None
            return CorrelationResult(**json.loads(row.result_json))

    def _store_receipt(self, message_id: str, name: str, result: CorrelationResult) -> CorrelationResult:
        data = {"correlated": result.correlated, "started": result.started, "buffered": result.buffered,
                "expires_at": result.expires_at}
        try:
            with self._sessions() as session, session.begin():
                session.add(MessageReceipt(message_id=f"api:{message_id}", message_name=name,
                                           result_json=json.dumps(data), created_at=utcnow()))
        except IntegrityError:
            previous = self._receipt(message_id)
            if previous is not None:
                previous.duplicate = True
                return previous
        return result

    def _claim_job(self, job_id: str) -> bool:
        """Only one process delivers an outbox job at a time (a short lease on the row)."""
        from .jobs import lease_job

        return lease_job(self._sessions, job_id, owner=f"router-{uuid.uuid4().hex[:8]}")

    def _delete_job(self, job_id: str) -> None:
        with self._sessions() as session, session.begin():
            session.execute(delete(Job).where(Job.id == job_id))


class _AlreadyDelivered(Exception):
    """A receipt shows this delivery already happened (crash recovery / duplicate)."""


def deliver_event(ex: Execution, spiff_task_id: str, name: str, event_type: str,
                  variables: dict[str, Any], source: str) -> None:
    """Let the waiting task ``spiff_task_id`` catch a message/signal and receive ``variables``."""
    try:
        task = ex.workflow.get_task_from_id(uuid.UUID(spiff_task_id))
    except Exception:  # noqa: BLE001
        task = None
    if task is None or task.state != TaskState.WAITING:
        raise _Undelivered()
    definition = _matching_definition(task.task_spec.event_definition, name)
    if definition is None:
        raise _Undelivered()
    payload: Any
    if event_type == "message":
        # SpiffWorkflow evaluates the correlation retrieval expressions on the payload when the
        # event is caught; we matched already, so give it the receiver's data with the message's
        payload = {**task.data, **variables, "payload": dict(variables), "result_var": RESULT_VAR}
    else:
        payload = dict(variables)
    event = BpmnEvent(definition, payload=payload, correlations=dict(ex.workflow.correlations))
    try:
        ex.workflow.send_event(event)
    except Exception as exc:  # noqa: BLE001 - Spiff refuses: not waiting for it after all
        log.info("instance %s did not catch %s %s: %s", ex.instance_id, event_type, name, exc)
        raise _Undelivered() from exc
    task.data.update(variables)
    task.data.pop(RESULT_VAR, None)
    ex.audit.append(f"{event_type}_received", actor=source, activity_id=getattr(task.task_spec, "bpmn_id", None),
                    data={"name": name, "variables": variables})


def prepare_event_start(workflow: Any, catches: Callable[[Any], bool]) -> None:
    """Start a workflow through one of its event start events.

    SpiffWorkflow runs every start event of a process; a plain (none) start next to a message,
    signal or timer start would win at once. When starting *by event*, the start events that do
    not catch that event are cancelled before the engine steps run.
    """
    for name in ("Start", "StartEventSplit"):
        task = workflow.get_next_task(state=TaskState.READY, spec_name=name)
        if task is not None:
            task.run()
    for task in workflow.get_tasks(state=TaskState.READY | TaskState.WAITING | TaskState.FUTURE | TaskState.LIKELY
                                   | TaskState.MAYBE):
        spec = task.task_spec
        if type(spec).__name__ != "StartEvent" or task.workflow is not workflow:
            continue
        definition = getattr(spec, "event_definition", None)
        if definition is None or not catches(definition):
            task.cancel()
    workflow.do_engine_steps()


def _matching_definition(event_definition: Any, name: str) -> Any:
    for d in getattr(event_definition, "event_definitions", None) or [event_definition]:
        if getattr(d, "name", None) == name:
            return d
    return None


def register_start_events(session: Session, definition: ProcessDefinition, model: dict[str, Any]) -> None:
    """Point the message/signal start subscriptions of ``definition.key`` at this (latest) version."""
    session.execute(delete(EventSubscription).where(
        EventSubscription.kind == "start", EventSubscription.definition_key == definition.key))
    for event_type, names in (("message", model.get("start_messages") or []),
                              ("signal", model.get("start_signals") or [])):
        for name in names:
            session.add(EventSubscription(
                id=str(uuid.uuid4()), event_type=event_type, event_name=name, kind="start",
                definition_id=definition.id, definition_key=definition.key, created_at=utcnow(),
            ))
