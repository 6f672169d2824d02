"""Segregation of duties: rules declared by a pack, enforced when a guarded task is claimed, delegated,
completed or signed off.

``sod.yaml`` (see docs/packs.md)::

    rules:
      - id: initiator-cannot-authorise
        description: The person who raised a change may not authorise it.
        process: change_normal
        tasks: [authorise]          # the guarded tasks (BPMN ids)
        not_same_as: [initiator]    # initiator | task:<bpmn id> | sibling

Subjects: ``initiator`` is the user who started the instance; ``task:<id>`` is whoever completed that
task in the same instance (its completer, the delegating owner, and the submitter of a signed-off
result); ``sibling`` is whoever holds or completed another instance of the same activation of a
multi-instance task (one vote per person on a CAB: the rule ``tasks: [cab_decision], not_same_as:
[sibling]``). Breaking a rule is :class:`~itsmflow.engine.errors.Forbidden` (HTTP 403) naming the rule id
and description.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import MultiInstanceTask

from .errors import Forbidden, SourceIssue
from .execution import Execution
from .raci import human_tasks
from .rules import RulesStore, SodRule
from .storage.models import HumanTask
from .yamlsrc import YamlSource, schema_issues

INITIATOR = "initiator"
SIBLING = "sibling"
_TASK_SUBJECT = re.compile(r"^task:(.+)$")

SOD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "description": {"type": "string"},
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "description", "process", "tasks", "not_same_as"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$", "maxLength": 255},
                    "description": {"type": "string", "minLength": 1},
                    "process": {"type": "string", "minLength": 1},
                    "tasks": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                    "not_same_as": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                    "clause": {"type": "string"},
                },
            },
        },
    },
}


def parse_sod(src: YamlSource, models: dict[str, dict[str, Any]],
              bpmn_files: dict[str, str], *, ignore: set[str] | frozenset[str] = frozenset(),
              at: list[Any] | None = None, known_ids: set[str] | None = None,
              ) -> tuple[list[SodRule], list[SourceIssue]]:
    """Rules of ``sod.yaml``, checked against the processes. ``ignore``: processes an organisation's
    tailoring disabled (their rules are dropped). ``at``: where the list of rules is in ``src`` (an
    organisation's tailoring adds rules under ``sod``; its structure is checked by the tailoring schema);
    ``known_ids``: rule ids already taken (by the pack's rules)."""
    if not src.ok:
        return [], list(src.issues)
    if src.data is None:
        return [], []
    if at is None:
        issues = schema_issues(src, SOD_SCHEMA)
        if issues:
            return [], issues
        path0: list[Any] = ["rules"]
        raw_rules = src.data.get("rules") or []
    else:
        issues, path0, raw_rules = [], list(at), src.data
        for part in at:
            raw_rules = raw_rules.get(part) if isinstance(raw_rules, dict) else None
        raw_rules = raw_rules or []
    out: list[SodRule] = []
    seen: set[str] = set(known_ids or ())
    for i, raw in enumerate(raw_rules):
        path = path0 + [i]
        rule_id, key = raw["id"], raw["process"]
        if rule_id in seen:
            issues.append(src.issue(path + ["id"], f"duplicate rule id {rule_id!r}"))
        seen.add(rule_id)
        if key in ignore:
            continue
        if key not in models:
            issues.append(src.issue(path + ["process"], f"unknown process {key!r}: the pack defines "
                                    f"{', '.join(sorted(models)) or 'no processes'}"))
            continue
        tasks = human_tasks(models[key])
        where = bpmn_files.get(key, key)
        for j, task_id in enumerate(raw["tasks"]):
            if task_id not in tasks:
                issues.append(src.issue(path + ["tasks", j], f"unknown task {task_id!r}: {where} has no user task "
                                        f"with that id in process {key!r}"))
        for j, subject in enumerate(raw["not_same_as"]):
            m = _TASK_SUBJECT.match(subject)
            if subject in (INITIATOR, SIBLING):
                continue
            if m is None:
                issues.append(src.issue(path + ["not_same_as", j], f"unknown subject {subject!r}: use "
                                        "'initiator', 'sibling' or 'task:<bpmn id>'"))
            elif m.group(1) not in tasks:
                issues.append(src.issue(path + ["not_same_as", j], f"unknown task {m.group(1)!r} in subject "
                                        f"{subject!r}: {where} has no user task with that id in process {key!r}"))
        out.append(SodRule(rule_id, raw["description"], key, tuple(raw["tasks"]), tuple(raw["not_same_as"])))
    return out, issues


class SodChecker:
    """``TaskService.actor_checks`` hook: may ``user_id`` act on this task of this instance?"""

    def __init__(self, rules: RulesStore) -> None:
        self._rules = rules

    def __call__(self, ex: Execution, task: Any, user_id: str) -> None:
        rules = self._rules.get(task.definition_id, ex.session)
        if rules is None:
            return
        for rule in rules.sod_rules(task.task_definition_key):
            reason = self._violation(ex.session, rule, ex.row.id, ex.row.started_by, user_id)
            if reason is None and SIBLING in rule.not_same_as:
                reason = self._sibling_violation(ex, task.id, user_id)
            if reason:
                raise Forbidden(
                    f"segregation of duties: rule {rule.id!r} forbids {user_id} to work on task "
                    f"{task.task_definition_key!r} ({rule.description.strip()}): {user_id} {reason}"
                )

    @staticmethod
    def _sibling_violation(ex: Execution, task_id: str, user_id: str) -> str | None:
        """Does the user hold or did the user complete another instance of this multi-instance activation?"""
        try:
            spiff_task = ex.workflow.get_task_from_id(uuid.UUID(task_id))
        except Exception:  # noqa: BLE001 - Spiff raises a generic TaskNotFoundException
            return None
        parent = spiff_task.parent if spiff_task is not None else None
        if parent is None or not isinstance(parent.task_spec, MultiInstanceTask):
            return None
        siblings = [str(c.id) for c in parent.children if c.id != spiff_task.id]
        if not siblings:
            return None
        rows = ex.session.execute(
            select(HumanTask.assignee, HumanTask.completed_by, HumanTask.owner, HumanTask.submitted_by)
            .where(HumanTask.id.in_(siblings))
        ).all()
        if any(user_id in r for r in rows):
            return "holds or completed another instance of this multi-instance task"
        return None

    @staticmethod
    def _violation(session: Session, rule: SodRule, instance_id: str, started_by: str | None,
                   user_id: str) -> str | None:
        for subject in rule.not_same_as:
            if subject == INITIATOR:
                if started_by == user_id:
                    return "started this process instance"
                continue
            m = _TASK_SUBJECT.match(subject)
            if m is None:
                continue
            rows = session.execute(
                select(HumanTask.completed_by, HumanTask.owner, HumanTask.submitted_by).where(
                    HumanTask.instance_id == instance_id, HumanTask.task_definition_key == m.group(1),
                    HumanTask.state == "completed")
            ).all()
            if any(user_id in r for r in rows):
                return f"did task {m.group(1)!r} in this process instance"
        return None
