"""RACI: who is Responsible, Accountable, Consulted and Informed for each task of a pack's processes.

``raci.yaml`` (see docs/packs.md)::

    processes:
      change_normal:
        tasks:
          classify:                        # BPMN id of the user task
            responsible: [change-manager]  # → candidate roles of the task
            accountable: change-manager    # → signs off the result when signoff: true
            consulted: [configuration-manager]
            informed: [change-initiator]
            consultation: required         # required (default) | advisory
            signoff: false

At run time:

- **Responsible** → candidate roles of the human task (:class:`RaciAssignment`, the executor's
  assignment strategy). Without an entry (or without ``responsible``), the BPMN decides:
  ``camunda:candidateGroups``, else the lane named by a role id.
- **Accountable** → with ``signoff: true``, completing the task submits the result for sign-off by
  this role (``TaskService.signoff``).
- **Consulted** → with ``consultation: required`` the task cannot be completed before every consulted
  role has recorded an opinion (:mod:`itsmflow.engine.consultation`).
- **Informed** → a notification per user holding the role when the task is created and completed
  (:mod:`itsmflow.engine.notifications`).
"""

from __future__ import annotations

from typing import Any

from SpiffWorkflow.task import Task

from .errors import SourceIssue
from .execution import Assignment, BpmnAssignment, Execution
from .rules import CONSULTATION_ADVISORY, CONSULTATION_REQUIRED, RaciEntry, RulesStore
from .yamlsrc import YamlSource, schema_issues

HUMAN_TASK_TYPES = ("userTask", "manualTask")

_ROLES = {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string", "minLength": 1}}]}
RACI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["processes"],
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "description": {"type": "string"},
        "processes": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "description": {"type": "string"},
                    "tasks": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "responsible": _ROLES,
                                "accountable": {"type": "string", "minLength": 1},
                                "consulted": _ROLES,
                                "informed": _ROLES,
                                "consultation": {"enum": [CONSULTATION_REQUIRED, CONSULTATION_ADVISORY]},
                                "signoff": {"type": "boolean"},
                                "description": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def human_tasks(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """User and manual tasks of a process model (``ProcessModel.as_dict()``), by BPMN id."""
    return {k: v for k, v in (model.get("activities") or {}).items() if v.get("type") in HUMAN_TASK_TYPES}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def parse_raci(src: YamlSource, roles: set[str], models: dict[str, dict[str, Any]],
               bpmn_files: dict[str, str]) -> tuple[dict[str, dict[str, RaciEntry]], list[SourceIssue]]:
    """Validate ``raci.yaml`` against the pack's roles and processes; entries by process key and task id.

    ``models``: process key → ``ProcessModel.as_dict()``; ``bpmn_files``: process key → file (for messages).
    """
    if not src.ok:
        return {}, list(src.issues)
    if src.data is None:
        return {}, []
    issues = schema_issues(src, RACI_SCHEMA)
    if issues:
        return {}, issues
    out: dict[str, dict[str, RaciEntry]] = {}
    for key, proc in (src.data.get("processes") or {}).items():
        if key not in models:
            issues.append(src.issue(["processes", key], f"unknown process {key!r}: the pack defines "
                                    f"{', '.join(sorted(models)) or 'no processes'}", key=True))
            continue
        tasks = human_tasks(models[key])
        entries: dict[str, RaciEntry] = {}
        for task_id, raw in ((proc or {}).get("tasks") or {}).items():
            path = ["processes", key, "tasks", task_id]
            if task_id not in tasks:
                issues.append(src.issue(path, f"unknown task {task_id!r}: {bpmn_files.get(key, key)} has no user "
                                        f"task with that id in process {key!r} (user tasks: "
                                        f"{', '.join(sorted(tasks)) or 'none'})", key=True))
                continue
            raw = raw or {}
            for field in ("responsible", "consulted", "informed", "accountable"):
                values = _as_list(raw.get(field))
                for i, role in enumerate(values):
                    if role not in roles:
                        where = path + [field] + ([i] if isinstance(raw.get(field), list) else [])
                        issues.append(src.issue(where, f"unknown role {role!r} in {field} of task {task_id!r} "
                                                "(not in the roles of pack.yaml)"))
            if raw.get("signoff") and not raw.get("accountable"):
                issues.append(src.issue(path + ["signoff"], f"task {task_id!r}: signoff needs an accountable role"))
            consulted = _as_list(raw.get("consulted"))
            entries[task_id] = RaciEntry(
                responsible=tuple(dict.fromkeys(_as_list(raw.get("responsible")))),
                accountable=raw.get("accountable"),
                consulted=tuple(dict.fromkeys(consulted)),
                informed=tuple(dict.fromkeys(_as_list(raw.get("informed")))),
                consultation=raw.get("consultation") or CONSULTATION_REQUIRED,
                signoff=bool(raw.get("signoff", False)),
            )
        out[key] = entries
    return out, issues


class RaciAssignment:
    """The executor's assignment strategy for pack processes: RACI Responsible roles become the task's
    candidate roles; without them (or without pack rules) the BPMN decides (:class:`BpmnAssignment`).
    ``camunda:candidateUsers`` and ``camunda:assignee`` are honoured in both cases."""

    def __init__(self, rules: RulesStore, fallback: Any = None) -> None:
        self._rules = rules
        self._fallback = fallback or BpmnAssignment()

    def assign(self, ex: Execution, task: Task, meta: dict[str, Any]) -> Assignment:
        base = self._fallback.assign(ex, task, meta)
        rules = self._rules.get(ex.definition.id, ex.session)
        entry = rules.entry(task.task_spec.bpmn_id) if rules else None
        if entry is not None and entry.responsible:
            base.candidate_roles = list(entry.responsible)
        return base


def signoff_role(rules: RulesStore):  # noqa: ANN201
    """``TaskService.signoff_role`` provider: the accountable role of tasks marked ``signoff: true``."""

    def provider(ex: Execution | None, definition_id: str, task_key: str) -> str | None:
        found = rules.get(definition_id, ex.session if ex is not None else None)
        entry = found.entry(task_key) if found else None
        return entry.accountable if entry is not None and entry.signoff else None

    return provider
