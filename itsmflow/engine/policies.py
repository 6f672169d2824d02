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
    schema, problems = read_policy_schema(schema_file, schema_display)
    if problems:
        return None, problems
    issues = schema_issues(src, schema)
    if issues:
        return None, [SourceIssue(i.file, i.line, i.column, f"policy {name!r}: {i.message}") for i in issues]
    # the values must survive JSON (they become process variables and audit data)
    try:
        json.dumps(src.data)
    except (TypeError, ValueError) as exc:
        return None, [src.issue([], f"policy {name!r}: values must be JSON-compatible ({exc})")]
    return src.data, []


def read_policy_schema(schema_file: Path, schema_display: str | None) -> tuple[Any, list[SourceIssue]]:
    """A policy's JSON Schema (draft 2020-12), checked."""
    where = schema_display or str(schema_file)
    try:
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return None, [SourceIssue(where, exc.lineno, exc.colno, f"not valid JSON: {exc.msg}")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [SourceIssue(where, None, None, f"cannot read: {exc}")]
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return None, [SourceIssue(where, None, None, f"not a valid JSON Schema (draft 2020-12): {exc.message}")]
    return schema, []


def merge_values(base: Any, override: Any) -> Any:
    """An organisation's policy values over the pack's: mappings merge key by key (recursively), every
    other value (lists included) replaces the pack's."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = merge_values(base[k], v) if k in base else v
        return out
    return override


class _At:
    """``src`` seen from ``at``: schema problems of a value found at ``at`` in ``src`` are located there."""

    def __init__(self, src: YamlSource, at: list[Any], prefix: str) -> None:
        self._src, self._at, self._prefix = src, list(at), prefix
        self.data = None

    def issue(self, path: Any, message: str, *, key: bool = False) -> SourceIssue:
        found = self._src.issue(self._at + list(path), f"{self._prefix}{message}", key=key)
        return found


def check_tailored_policy(name: str, merged: Any, schema: Any, src: YamlSource, at: list[Any],
                          schema_display: str | None) -> list[SourceIssue]:
    """The tailored values of policy ``name`` (pack values merged with the organisation's, which are at
    ``at`` in ``src``) against the policy's schema; every problem located in the organisation's file (at
    the offending value when the organisation wrote it, else at the policy's entry)."""
    suffix = f" (schema {schema_display})" if schema_display else ""
    issues = schema_issues(_At(src, at, f"policy {name!r}: "), schema, data=merged) if schema is not None else []
    issues = [SourceIssue(i.file, i.line, i.column, i.message + suffix) for i in issues]
    try:
        json.dumps(merged)
    except (TypeError, ValueError) as exc:
        issues.append(src.issue(at, f"policy {name!r}: values must be JSON-compatible ({exc})"))
    return issues


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
