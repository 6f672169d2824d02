"""Schedules: calendars of the process instances that occupy a time window.

A process joins a schedule by declaring it in its BPMN (``camunda:properties`` on ``bpmn:process``, so
Camunda Modeler edits it in the properties panel)::

    itsmflow.schedule          = changes         # schedule name (GET /api/schedule/changes)
    itsmflow.schedule.start    = plannedStart    # variables holding the window [start, end)
    itsmflow.schedule.end      = plannedEnd
    itsmflow.schedule.state    = scheduleState   # listed while this variable is set (e.g. approved, scheduled)
    itsmflow.schedule.summary  = title           # optional: one-line description
    itsmflow.schedule.scope    = affectedServices  # optional: what the entry occupies (list or string)
    itsmflow.schedule.freeze   = freeze_windows  # optional: the pack policy listing freeze windows

The engine knows nothing of changes: an entry is a *running* (active or suspended) instance of such a
process whose state variable is set and whose window parses: what is approved, scheduled or in progress.
Ended instances leave the schedule; their windows stay in their history and variables. Processes use the same view from scripts to detect clashes:
``schedule_entries(name, start, end)`` returns the overlapping entries of *other* instances (the calling
instance is left out). Freeze windows come from the policy named by ``itsmflow.schedule.freeze`` in the
rules of each process's latest version (``{"windows": [{"start", "end", "reason", "services"?}]}``).

Entries are read from the stored variables (``process_instance.variables_json``) of the running instances
of the schedule's definitions; the cost grows with the number of running instances of those processes, not
with the history.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .clock import as_utc, iso
from .execution import current_execution
from .errors import FieldIssue, NotFound, ValidationFailed
from .rules import RulesStore
from .storage.models import ProcessDefinition, ProcessInstance

PREFIX = "itsmflow.schedule"
RUNNING = ("active", "suspended")
_NAME = re.compile(r"^[a-z][a-zA-Z0-9_-]{0,63}$")
RESERVED_NAMES = {"name", "from", "to", "freezeWindows"}  # keys of the API answer beside the entries


class BadScheduleRange(ValidationFailed):
    """The requested range is not a pair of ISO 8601 instants with ``to`` later than ``from`` (HTTP 422)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"bad schedule range: {message}", [FieldIssue(path, message)])


def parse_instant(value: Any) -> datetime | None:
    """An ISO 8601 date or date-time (``Z`` or an offset; naive counts as UTC) → aware UTC datetime."""
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return as_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):  # not a date, or out of datetime's range once in UTC
        return None


def _scope(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v not in (None, "")]
    return []


@dataclass(frozen=True)
class ScheduleSpec:
    """How one process appears in a schedule (from its BPMN extension properties)."""

    name: str
    start: str
    end: str
    state: str
    summary: str | None = None
    scope: str | None = None
    freeze: str | None = None

    @classmethod
    def from_properties(cls, props: dict[str, Any] | None) -> "ScheduleSpec | None":
        props = props or {}
        name = (props.get(PREFIX) or "").strip()
        if not name or not _NAME.match(name) or name in RESERVED_NAMES:
            return None

        def get(key: str, default: str | None = None) -> str | None:
            value = props.get(f"{PREFIX}.{key}")
            return value.strip() if isinstance(value, str) and value.strip() else default

        return cls(name, get("start", "plannedStart"), get("end", "plannedEnd"), get("state", "scheduleState"),
                   get("summary"), get("scope"), get("freeze"))


@dataclass(frozen=True)
class ScheduleEntry:
    process_instance_id: str
    business_key: str | None
    definition_key: str
    planned_start: datetime
    planned_end: datetime
    state: str
    summary: str | None
    scope: list[str] = field(default_factory=list)
    instance_state: str = "active"

    def as_dict(self) -> dict[str, Any]:
        return {
            "processInstanceId": self.process_instance_id,
            "businessKey": self.business_key,
            "definitionKey": self.definition_key,
            "plannedStart": iso(self.planned_start),
            "plannedEnd": iso(self.planned_end),
            "state": self.state,
            "summary": self.summary,
            "scope": list(self.scope),
            "instanceState": self.instance_state,
        }


@dataclass(frozen=True)
class FreezeWindow:
    start: datetime
    end: datetime
    reason: str | None
    scope: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start": iso(self.start), "end": iso(self.end), "reason": self.reason}
        if self.scope:
            out["services"] = list(self.scope)
        return out


@dataclass(frozen=True)
class ScheduleView:
    name: str
    start: datetime
    end: datetime
    entries: list[ScheduleEntry]
    freeze_windows: list[FreezeWindow]


def overlaps(a_start: datetime, a_end: datetime, b_start: datetime, b_end: datetime) -> bool:
    """Half-open windows [start, end) overlap."""
    return a_start < b_end and b_start < a_end


class ScheduleService:
    def __init__(self, sessions: sessionmaker[Session], rules: RulesStore | None = None) -> None:
        self._sessions = sessions
        self._rules = rules
        self._specs: dict[str, ScheduleSpec | None] = {}  # definition id -> spec (definitions are immutable)
        self._lock = threading.Lock()

    # -- definitions ------------------------------------------------------------------------------
    def _definitions(self, session: Session, name: str) -> dict[str, tuple[str, int, ScheduleSpec]]:
        """Definition id → (key, version, spec) of every definition version in schedule ``name``."""
        rows = session.execute(select(ProcessDefinition.id, ProcessDefinition.key, ProcessDefinition.version)).all()
        missing = [r.id for r in rows if r.id not in self._specs]
        if missing:
            models = session.execute(
                select(ProcessDefinition.id, ProcessDefinition.model_json).where(ProcessDefinition.id.in_(missing))
            ).all()
            with self._lock:
                for def_id, model_json in models:
                    model = json.loads(model_json or "{}")
                    self._specs[def_id] = ScheduleSpec.from_properties(model.get("properties"))
        out: dict[str, tuple[str, int, ScheduleSpec]] = {}
        for r in rows:
            spec = self._specs.get(r.id)
            if spec is not None and spec.name == name:
                out[r.id] = (r.key, r.version, spec)
        return out

    def names(self) -> list[str]:
        with self._sessions() as session:
            self._definitions(session, "")
        return sorted({s.name for s in self._specs.values() if s is not None})

    # -- entries ----------------------------------------------------------------------------------
    def entries(self, session: Session, name: str, start: datetime, end: datetime, *,
                exclude_instance: str | None = None) -> list[ScheduleEntry]:
        definitions = self._definitions(session, name)
        if not definitions:
            return []
        q = select(ProcessInstance.id, ProcessInstance.business_key, ProcessInstance.definition_id,
                   ProcessInstance.definition_key, ProcessInstance.state, ProcessInstance.variables_json).where(
            ProcessInstance.definition_id.in_(list(definitions)), ProcessInstance.state.in_(RUNNING),
        )
        if exclude_instance is not None:
            q = q.where(ProcessInstance.id != exclude_instance)
        found: list[ScheduleEntry] = []
        for row in session.execute(q):
            _key, _version, spec = definitions[row.definition_id]
            variables = json.loads(row.variables_json or "{}")
            entry = self._entry(spec, row, variables)
            if entry is not None and overlaps(entry.planned_start, entry.planned_end, start, end):
                found.append(entry)
        found.sort(key=lambda e: (e.planned_start, e.planned_end, e.business_key or "", e.process_instance_id))
        return found

    @staticmethod
    def _entry(spec: ScheduleSpec, row: Any, variables: dict[str, Any]) -> ScheduleEntry | None:
        state = variables.get(spec.state)
        if state in (None, "") or not isinstance(state, str):
            return None
        planned_start, planned_end = parse_instant(variables.get(spec.start)), parse_instant(variables.get(spec.end))
        if planned_start is None or planned_end is None or planned_end <= planned_start:
            return None
        summary = variables.get(spec.summary) if spec.summary else None
        return ScheduleEntry(
            process_instance_id=row.id, business_key=row.business_key, definition_key=row.definition_key,
            planned_start=planned_start, planned_end=planned_end, state=state,
            summary=str(summary) if summary not in (None, "") else None,
            scope=_scope(variables.get(spec.scope)) if spec.scope else [], instance_state=row.state,
        )

    # -- freeze windows ---------------------------------------------------------------------------
    def freeze_windows(self, session: Session, name: str, start: datetime, end: datetime) -> list[FreezeWindow]:
        if self._rules is None:
            return []
        latest: dict[str, tuple[int, str, ScheduleSpec]] = {}
        for def_id, (key, version, spec) in self._definitions(session, name).items():
            if spec.freeze and (key not in latest or version > latest[key][0]):
                latest[key] = (version, def_id, spec)
        windows: dict[tuple, FreezeWindow] = {}
        for _version, def_id, spec in latest.values():
            rules = self._rules.get(def_id, session)
            policy = (rules.policies.get(spec.freeze) if rules else None) or {}
            for raw in policy.get("windows") or []:
                w_start, w_end = parse_instant(raw.get("start")), parse_instant(raw.get("end"))
                if w_start is None or w_end is None or not overlaps(w_start, w_end, start, end):
                    continue
                window = FreezeWindow(w_start, w_end, raw.get("reason"), _scope(raw.get("services")))
                windows[(w_start, w_end, window.reason, tuple(window.scope))] = window
        return sorted(windows.values(), key=lambda w: (w.start, w.end))

    # -- the API view -----------------------------------------------------------------------------
    def view(self, name: str, start: Any, end: Any) -> ScheduleView:
        range_start, range_end = parse_instant(start), parse_instant(end)
        if range_start is None:
            raise BadScheduleRange("from", f"'from' must be an ISO 8601 date or date-time, got {start!r}")
        if range_end is None:
            raise BadScheduleRange("to", f"'to' must be an ISO 8601 date or date-time, got {end!r}")
        if range_end <= range_start:
            raise BadScheduleRange("to", f"'to' ({iso(range_end)}) must be later than 'from' ({iso(range_start)})")
        with self._sessions() as session:
            if not self._definitions(session, name):
                known = ", ".join(self.names()) or "none"
                raise NotFound(f"no process declares schedule {name!r} (schedules: {known})")
            return ScheduleView(name, range_start, range_end, self.entries(session, name, range_start, range_end),
                                self.freeze_windows(session, name, range_start, range_end))

    # -- the function offered to scripts ----------------------------------------------------------
    def script_function(self):  # noqa: ANN201
        """``schedule_entries(name, start, end)`` for process scripts: the entries of other instances
        overlapping [start, end), as plain dicts (see :meth:`ScheduleEntry.as_dict`)."""

        def schedule_entries(name: str, start: Any, end: Any) -> list[dict[str, Any]]:
            ex = current_execution.get()
            if ex is None:
                raise RuntimeError("schedule_entries() is only available while a process instance runs")
            if not isinstance(name, str):
                raise TypeError("schedule_entries(name, start, end): name must be a string")
            range_start, range_end = parse_instant(start), parse_instant(end)
            if range_start is None or range_end is None:
                raise ValueError("schedule_entries(name, start, end): start and end must be ISO 8601 date-times")
            if range_end <= range_start:
                return []
            return [e.as_dict() for e in self.entries(ex.session, name, range_start, range_end,
                                                      exclude_instance=ex.instance_id)]

        return schedule_entries
