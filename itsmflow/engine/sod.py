"""Segregation of duties: rules declared by a pack, enforced when a guarded task is claimed, delegated,
completed or signed off.

``sod.yaml`` (see docs/packs.md)::

    rules:
      - id: initiator-cannot-authorise
        description: The person who raised a change may not authorise it.
        process: change_normal
        tasks: [authorise]          # the guarded tasks (BPMN ids)
        not_same_as: [initiator]    # initiator | task:<bpmn id>

Subjects: ``initiator`` is the user who started the instance; ``task:<id>`` is whoever completed that
task in the same instance (its completer, the delegating owner, and the submitter of a signed-off
result). Breaking a rule is :class:`~itsmflow.engine.errors.Forbidden` (HTTP 403) naming the rule id
and description.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import Forbidden, SourceIssue
from .execution import Execution
from .raci import human_tasks
from .rules import RulesStore, SodRule
from .storage.models import HumanTask
from .yamlsrc import YamlSource, schema_issues

INITIATOR = "initiator"
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
              bpmn_files: dict[str, str]) -> tuple[list[SodRule], list[SourceIssue]]:
    if not src.ok:
        return [], list(src.issues)
    if src.data is None:
        return [], []
    issues = schema_issues(src, SOD_SCHEMA)
    if issues:
        return [], issues
    out: list[SodRule] = []
    seen: set[str] = set()
    for i, raw in enumerate(src.data.get("rules") or []):
        path = ["rules", i]
        rule_id, key = raw["id"], raw["process"]
        if rule_id in seen:
            issues.append(src.issue(path + ["id"], f"duplicate rule id {rule_id!r}"))
        seen.add(rule_id)
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
            if subject == INITIATOR:
                continue
            if m is None:
                issues.append(src.issue(path + ["not_same_as", j], f"unknown subject {subject!r}: use "
                                        "'initiator' or 'task:<bpmn id>'"))
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
            if reason:
                raise Forbidden(
                    f"segregation of duties: rule {rule.id!r} forbids {user_id} to work on task "
                    f"{task.task_definition_key!r} ({rule.description.strip()}): {user_id} {reason}"
                )

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
