"""Engine-facing metadata of parsed BPMN processes (plain, JSON-serialisable dataclasses)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from itsmflow.engine.errors import SourceIssue


@dataclass
class UserTaskModel:
    id: str
    name: str | None = None
    lane: str | None = None
    lane_id: str | None = None
    form_key: str | None = None
    candidate_groups: list[str] = field(default_factory=list)
    candidate_users: list[str] = field(default_factory=list)
    assignee: str | None = None
    due_date: str | None = None
    follow_up_date: str | None = None
    priority: str | None = None
    documentation: str | None = None
    properties: dict[str, str | None] = field(default_factory=dict)
    form_fields: list[dict[str, Any]] = field(default_factory=list)
    parent: str | None = None  # id of the enclosing (event) sub-process, None at process level

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TimerModel:
    element_id: str
    element_type: str  # startEvent, intermediateCatchEvent, boundaryEvent
    kind: str  # timeDate | timeDuration | timeCycle | None (no time specification)
    expression: str | None
    literal: bool  # the expression is a plain ISO 8601 literal (not a script expression)
    is_start: bool = False
    attached_to: str | None = None
    interrupting: bool | None = None
    parent: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ProcessModel:
    key: str
    name: str | None
    file: str
    is_executable: bool
    documentation: str | None = None
    version_tag: str | None = None
    start_form_key: str | None = None
    start_initiator: str | None = None
    start_form_fields: list[dict[str, Any]] = field(default_factory=list)  # camunda:formField of the start event
    candidate_starter_groups: list[str] = field(default_factory=list)
    candidate_starter_users: list[str] = field(default_factory=list)
    properties: dict[str, str | None] = field(default_factory=dict)
    messages_caught: list[str] = field(default_factory=list)
    messages_thrown: list[str] = field(default_factory=list)
    start_messages: list[str] = field(default_factory=list)
    signals_caught: list[str] = field(default_factory=list)
    signals_thrown: list[str] = field(default_factory=list)
    start_signals: list[str] = field(default_factory=list)
    timers: list[TimerModel] = field(default_factory=list)
    user_tasks: dict[str, UserTaskModel] = field(default_factory=dict)
    activities: dict[str, dict[str, Any]] = field(default_factory=dict)
    lanes: dict[str, str | None] = field(default_factory=dict)  # lane id -> name
    called_processes: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecisionModel:
    id: str
    name: str | None
    file: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CollaborationModel:
    id: str
    name: str | None
    file: str
    participants: list[dict[str, Any]] = field(default_factory=list)
    message_flows: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ParsedDeployment:
    """Result of :func:`itsmflow.engine.bpmn.parsing.parse_deployment`.

    ``processes`` only holds executable processes (those have a SpiffWorkflow spec in ``specs`` and
    their called/embedded sub-process specs in ``subprocess_specs``). Everything else defined in the
    files is listed in ``non_executable`` (with a reason in ``non_executable_reasons``).
    """

    files: dict[str, bytes]
    file_kinds: dict[str, str]  # name -> "bpmn" | "dmn"
    file_processes: dict[str, list[str]]  # name -> ids of every process the file defines
    processes: dict[str, ProcessModel]
    non_executable: list[str]
    non_executable_reasons: dict[str, str]
    non_executable_models: dict[str, ProcessModel]
    specs: dict[str, Any]  # process id -> BpmnProcessSpec
    subprocess_specs: dict[str, dict[str, Any]]  # process id -> {spec name: BpmnProcessSpec}
    decisions: dict[str, DecisionModel] = field(default_factory=dict)
    collaborations: dict[str, CollaborationModel] = field(default_factory=dict)
    # collaboration id -> (BpmnProcessSpec starting every executable participant, subprocess specs)
    collaboration_specs: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    warnings: list[SourceIssue] = field(default_factory=list)

    def spec(self, process_id: str):
        return self.specs[process_id]

    def as_dict(self) -> dict:
        """Metadata only (no bytes, no Spiff objects)."""
        return {
            "files": [
                {
                    "name": name,
                    "kind": self.file_kinds.get(name),
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "processes": list(self.file_processes.get(name, [])),
                }
                for name, data in self.files.items()
            ],
            "processes": {k: v.as_dict() for k, v in self.processes.items()},
            "non_executable": list(self.non_executable),
            "non_executable_reasons": dict(self.non_executable_reasons),
            "non_executable_models": {k: v.as_dict() for k, v in self.non_executable_models.items()},
            "decisions": {k: v.as_dict() for k, v in self.decisions.items()},
            "collaborations": {k: v.as_dict() for k, v in self.collaborations.items()},
            "warnings": [w.as_dict() for w in self.warnings],
        }
