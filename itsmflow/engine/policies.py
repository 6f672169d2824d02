"""Policies: a pack's named configuration values (YAML, each validated by its JSON Schema).

Every instance of a pack's processes starts with the variable ``policies`` (one key per policy name),
so gateway conditions and scripts can read them (``policies["change_authority"]["levels"]``); the
``process_started`` audit event records the values that applied. ``policies`` is set by the engine:
a start or completion that submits a variable of that name is refused (HTTP 422).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .errors import FieldIssue, SourceIssue, ValidationFailed
from .execution import Execution
from .repository import CachedDefinition
from .rules import RulesStore
from .yamlsrc import YamlSource, schema_issues

POLICIES_VARIABLE = "policies"


def load_policy(name: str, file: Path, file_display: str, schema_file: Path | None,
                schema_display: str | None) -> tuple[Any, list[SourceIssue]]:
    """The policy's values, validated against its schema (problems located in the YAML file)."""
    src = YamlSource.read(file, file_display)
    if not src.ok:
        return None, list(src.issues)
    if not isinstance(src.data, dict):
        return None, [src.issue([], f"policy {name!r}: expected a mapping of values")]
    if schema_file is None:
        return src.data, []
    try:
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return None, [SourceIssue(schema_display or str(schema_file), exc.lineno, exc.colno, f"not valid JSON: {exc.msg}")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [SourceIssue(schema_display or str(schema_file), None, None, f"cannot read: {exc}")]
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return None, [SourceIssue(schema_display or str(schema_file), None, None,
                                  f"not a valid JSON Schema (draft 2020-12): {exc.message}")]
    issues = schema_issues(src, schema)
    if issues:
        return None, [SourceIssue(i.file, i.line, i.column, f"policy {name!r}: {i.message}") for i in issues]
    # the values must survive JSON (they become process variables and audit data)
    try:
        json.dumps(src.data)
    except (TypeError, ValueError) as exc:
        return None, [src.issue([], f"policy {name!r}: values must be JSON-compatible ({exc})")]
    return src.data, []


class PolicyInjector:
    """``Executor.start_variables`` provider and ``TaskService.completion_checks`` guard."""

    def __init__(self, rules: RulesStore) -> None:
        self._rules = rules

    def start_variables(self, definition: CachedDefinition) -> dict[str, Any]:
        rules = self._rules.get(definition.id)
        if rules is None:
            return {}
        return {POLICIES_VARIABLE: json.loads(json.dumps(rules.policies))}  # a private copy per instance

    def refuse_override(self, definition_id: str, variables: dict[str, Any]) -> None:
        if POLICIES_VARIABLE in variables and self._rules.get(definition_id) is not None:
            raise ValidationFailed(
                "'policies' is set by the engine from the pack's policies and cannot be submitted",
                [FieldIssue(f"$.{POLICIES_VARIABLE}", "reserved: set by the engine from the pack's policies")],
            )

    def start_check(self, definition_id: str, variables: dict[str, Any]) -> dict[str, Any]:
        self.refuse_override(definition_id, variables)
        return variables

    def completion_check(self, ex: Execution, task: Any, principal: Any, values: dict[str, Any]) -> dict[str, Any]:
        self.refuse_override(task.definition_id, values)
        return values
