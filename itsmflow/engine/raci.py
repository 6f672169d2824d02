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
               bpmn_files: dict[str, str], *, ignore: set[str] | frozenset[str] = frozenset(),
               ) -> tuple[dict[str, dict[str, RaciEntry]], list[SourceIssue]]:
    """Validate ``raci.yaml`` against the pack's roles and processes; entries by process key and task id.

    ``models``: process key → ``ProcessModel.as_dict()``; ``bpmn_files``: process key → file (for messages);
    ``ignore``: processes an organisation's tailoring disabled (their entries are skipped, not checked).
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
        if key in ignore:
            continue
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
            issues += _unknown_roles(src, path, raw, roles, task_id, "not in the roles of pack.yaml")
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


RACI_FIELDS = ("responsible", "accountable", "consulted", "informed", "consultation", "signoff")


def _unknown_roles(src: YamlSource, path: list[Any], raw: dict[str, Any], roles: set[str], task_id: str,
                   why: str) -> list[SourceIssue]:
    """A RACI entry's roles that are not in ``roles``, each located at its own item in ``src``."""
    issues = []
    for field in ("responsible", "consulted", "informed", "accountable"):
        for i, role in enumerate(_as_list(raw.get(field))):
            if role not in roles:
                where = path + [field] + ([i] if isinstance(raw.get(field), list) else [])
                issues.append(src.issue(where, f"unknown role {role!r} in {field} of task {task_id!r} ({why})"))
    return issues


def override_raci(src: YamlSource, path: list[Any], raw: dict[str, Any], base: RaciEntry | None,
                  roles: set[str], task_id: str) -> tuple[RaciEntry | None, list[SourceIssue]]:
    """An organisation's RACI override of one task (tailoring ``raci.<process>.<task>``, already checked
    against :data:`RACI_TASK_SCHEMA`): the fields it gives replace the pack's, the others stay.
    ``roles``: every role name the override may use; problems are located at ``path`` in ``src``."""
    issues = _unknown_roles(src, path, raw, roles, task_id,
                            "not a role of the pack, nor an organisation role of the tailoring")
    merged = base.as_dict() if base is not None else RaciEntry().as_dict()
    for field in RACI_FIELDS:
        if field in raw:
            value = raw[field]
            merged[field] = _as_list(value) if field in ("responsible", "consulted", "informed") else value
    if merged.get("signoff") and not merged.get("accountable"):
        issues.append(src.issue(path + ["signoff"], f"task {task_id!r}: signoff needs an accountable role"))
    if issues:
        return None, issues
    return RaciEntry(
        responsible=tuple(dict.fromkeys(merged["responsible"])), accountable=merged["accountable"],
        consulted=tuple(dict.fromkeys(merged["consulted"])), informed=tuple(dict.fromkeys(merged["informed"])),
        consultation=merged["consultation"] or CONSULTATION_REQUIRED, signoff=bool(merged["signoff"]),
    ), []


def map_roles(entry: RaciEntry, role_map: dict[str, str]) -> RaciEntry:
    """The entry in the organisation's role names (pack role id → organisation role; others unchanged)."""
    if not role_map:
        return entry

    def m(roles: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(role_map.get(r, r) for r in roles))

    return RaciEntry(
        responsible=m(entry.responsible),
        accountable=role_map.get(entry.accountable, entry.accountable) if entry.accountable else None,
        consulted=m(entry.consulted), informed=m(entry.informed),
        consultation=entry.consultation, signoff=entry.signoff,
    )


class RaciAssignment:
    """The executor's assignment strategy for pack processes: RACI Responsible roles become the task's
    candidate roles; without them (or without pack rules) the BPMN decides (:class:`BpmnAssignment`).
    ``camunda:candidateUsers`` and ``camunda:assignee`` are honoured in both cases.

    With a directory, an assignee or candidate user that is not a user of the directory (a ``${variable}``
    holding a mistyped id, say) is dropped, and recorded in the audit trail as ``assignment_ignored``: the
    task stays with its candidate roles instead of going to a user nobody can act as."""

    def __init__(self, rules: RulesStore, fallback: Any = None, directory: Any = None) -> None:
        self._rules = rules
        self._fallback = fallback or BpmnAssignment()
        self._directory = directory

    def assign(self, ex: Execution, task: Task, meta: dict[str, Any]) -> Assignment:
        base = self._fallback.assign(ex, task, meta)
        rules = self._rules.get(ex.definition.id, ex.session)
        entry = rules.entry(task.task_spec.bpmn_id) if rules else None
        if entry is not None and entry.responsible:
            base.candidate_roles = list(entry.responsible)  # already in the organisation's role names
        elif rules is not None and rules.role_map:
            # roles the BPMN names (lane, camunda:candidateGroups, also ${variables} holding pack role
            # ids, e.g. from a policy) are pack role ids: offer the task to the organisation's role
            base.candidate_roles = list(dict.fromkeys(rules.map_role(r) for r in base.candidate_roles))
        self._known_users_only(ex, task, base)
        return base

    def _known_users_only(self, ex: Execution, task: Task, base: Assignment) -> None:
        users = getattr(self._directory, "users", None)
        if not users:
            return  # no directory: identities are the caller's business
        unknown = [u for u in [base.assignee, *base.candidate_users] if u is not None and u not in users]
        if not unknown:
            return
        base.assignee = base.assignee if base.assignee in users else None
        base.candidate_users = [u for u in base.candidate_users if u in users]
        ex.audit.append("assignment_ignored", actor=None, activity_id=task.task_spec.bpmn_id,
                        data={"unknownUsers": unknown, "reason": "not a user of the directory; the task stays with "
                              "its candidate roles"})


def signoff_role(rules: RulesStore):  # noqa: ANN201
    """``TaskService.signoff_role`` provider: the accountable role of tasks marked ``signoff: true``."""

    def provider(ex: Execution | None, definition_id: str, task_key: str) -> str | None:
        found = rules.get(definition_id, ex.session if ex is not None else None)
        entry = found.entry(task_key) if found else None
        return entry.accountable if entry is not None and entry.signoff else None

    return provider
