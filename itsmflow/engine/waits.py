"""What an instance is waiting for: message and signal catch events, and timers.

After every command the engine reads the waiting catch events of the workflow and keeps two
tables in step with them, in the same transaction as the instance snapshot:

- ``event_subscription`` rows for message/signal catches (indexed for routing), and
- ``job`` rows of type ``timer`` with the timer's due time (fired by the job executor).

Correlation: a message's correlation properties (BPMN ``correlationProperty`` with a retrieval
expression per message) are evaluated on the *sender's* payload and on the *receiver's* own
variables; a message reaches a waiting instance when the values are equal. Without correlation
properties the business key is the fallback.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone  # noqa: F401
from typing import Any

from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.multiple import MultipleEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.item_aware_event import SignalEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.timer import (
    CycleTimerEventDefinition,
    TimerEventDefinition,
)
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .clock import utcnow
from .storage.models import EventSubscription, Job


@dataclass(frozen=True)
class Wait:
    kind: str  # message | signal | timer
    name: str | None
    spiff_task_id: str
    activity_id: str | None
    correlation: dict[str, Any] | None = None
    due_at: datetime | None = None


def canonical_correlation(values: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(sha256 key, canonical JSON) of correlation values; (None, None) when there are none."""
    if not values:
        return None, None
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest(), text


def evaluate_correlation(script_engine: Any, definition: MessageEventDefinition, context: dict[str, Any],
                         recorded: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """Values of a message's correlation properties, from recorded correlations or ``context``."""
    props = getattr(definition, "correlation_properties", None) or []
    values: dict[str, Any] = {}
    for prop in props:
        found = None
        for key in prop.correlation_keys or []:
            found = (recorded or {}).get(key, {}).get(prop.name)
            if found is not None:
                break
        if found is None and prop.retrieval_expression:
            try:
                found = script_engine.environment.evaluate(prop.retrieval_expression, dict(context))
            except Exception:  # noqa: BLE001 - a value we cannot compute simply does not correlate
                found = None
        if found is not None:
            values[prop.name] = found
    return values or None


def _definitions(event_definition: Any) -> list[Any]:
    if isinstance(event_definition, MultipleEventDefinition):
        return list(event_definition.event_definitions)
    return [event_definition]


def _catching_activity(task: Task, definition: Any) -> str | None:
    """The catch event's id; for an event-based gateway, the branch event that catches ``definition``."""
    spec = task.task_spec
    children = getattr(spec.event_definition, "event_definitions", None)
    outputs = getattr(spec, "outputs", None) or []
    if type(spec).__name__ == "EventBasedGateway" and children and len(children) == len(outputs):
        # SpiffWorkflow moves the branch events' definitions onto the gateway, in branch order
        for child, out in zip(children, outputs):
            if child is definition:
                return getattr(out, "bpmn_id", None)
    return getattr(spec, "bpmn_id", None)


def _timer_due(task: Task, definition: TimerEventDefinition) -> datetime | None:
    value = task._get_internal_data("event_value")
    if value is None:
        return None
    try:
        if isinstance(definition, CycleTimerEventDefinition):
            if not isinstance(value, dict) or value.get("cycles") == 0:
                return None
            due = datetime.fromisoformat(value["next"])
        else:
            due = TimerEventDefinition.get_datetime(value) if isinstance(value, str) else value
        if isinstance(due, datetime):
            return due if due.tzinfo else due.replace(tzinfo=timezone.utc)
    except (ValueError, TypeError, KeyError):
        return None
    return None


def current_waits(workflow: BpmnWorkflow) -> list[Wait]:
    waits: list[Wait] = []
    engine = workflow.script_engine
    for task in list(workflow.event_manager.tasks.values()):
        if task.state != TaskState.WAITING:
            continue
        for d in _definitions(task.task_spec.event_definition):
            activity = _catching_activity(task, d)
            if isinstance(d, MessageEventDefinition):
                corr = evaluate_correlation(engine, d, task.data, task.workflow.correlations or workflow.correlations)
                waits.append(Wait("message", d.name, str(task.id), activity, corr))
            elif isinstance(d, SignalEventDefinition):
                waits.append(Wait("signal", d.name, str(task.id), activity))
            elif isinstance(d, TimerEventDefinition):
                due = _timer_due(task, d)
                if due is not None:
                    waits.append(Wait("timer", d.name, str(task.id), activity, due_at=due))
    return waits


def has_waits(workflow: BpmnWorkflow) -> bool:
    """Whether the workflow may wait for a message, signal or timer (a cheap superset of
    :func:`current_waits` being non-empty: no correlation is evaluated)."""
    return any(t.state == TaskState.WAITING for t in workflow.event_manager.tasks.values())


def sync_waits(session: Session, instance_id: str, business_key: str | None, workflow: BpmnWorkflow | None,
               *, first_write: bool) -> tuple[bool, bool]:
    """Make the instance's subscription and timer-job rows match what the workflow waits for.

    ``first_write`` says the instance has no such rows yet (a new instance, or a state read that
    waited for nothing): then nothing is read. Returns (whether a new message subscription was
    added — a buffered message may be waiting for it —, whether the instance now waits at all)."""
    waits = current_waits(workflow) if workflow is not None else []
    if not waits and first_write:
        return False, False
    now = utcnow()

    wanted_subs = {(w.kind, w.name, w.spiff_task_id, canonical_correlation(w.correlation)[0]): w
                   for w in waits if w.kind in ("message", "signal")}
    existing_subs: dict[tuple, str] = {}
    if not first_write:
        for row in session.execute(
            select(EventSubscription.id, EventSubscription.event_type, EventSubscription.event_name,
                   EventSubscription.spiff_task_id, EventSubscription.correlation_key)
            .where(EventSubscription.instance_id == instance_id)
        ):
            existing_subs[(row.event_type, row.event_name, row.spiff_task_id, row.correlation_key)] = row.id
    stale = [sid for key, sid in existing_subs.items() if key not in wanted_subs]
    if stale:
        session.execute(delete(EventSubscription).where(EventSubscription.id.in_(stale)))
    new_message_wait = False
    for key, w in wanted_subs.items():
        if key in existing_subs:
            continue
        new_message_wait = new_message_wait or w.kind == "message"
        ckey, cjson = canonical_correlation(w.correlation)
        session.add(EventSubscription(
            id=str(uuid.uuid4()), event_type=w.kind, event_name=w.name, kind="catch", instance_id=instance_id,
            spiff_task_id=w.spiff_task_id, activity_id=w.activity_id, business_key=business_key,
            correlation_key=ckey, correlation_json=cjson, created_at=now,
        ))

    # one timer job per waiting timer task; a fired cycle timer's job is deleted when it fires,
    # so its next occurrence gets a new job here
    wanted_timers = {w.spiff_task_id: w for w in waits if w.kind == "timer"}
    existing_timers: dict[str, str] = {}
    if not first_write:
        for row in session.execute(
            select(Job.id, Job.spiff_task_id).where(Job.instance_id == instance_id, Job.job_type == "timer")
        ):
            existing_timers[row.spiff_task_id] = row.id
    stale_jobs = [jid for key, jid in existing_timers.items() if key not in wanted_timers]
    if stale_jobs:
        session.execute(delete(Job).where(Job.id.in_(stale_jobs)))
    for key, w in wanted_timers.items():
        if key in existing_timers:
            continue
        session.add(Job(
            id=str(uuid.uuid4()), job_type="timer", instance_id=instance_id, spiff_task_id=w.spiff_task_id,
            activity_id=w.activity_id, due_at=w.due_at, payload_json="{}", created_at=now,
        ))
    return new_message_wait, bool(waits)
