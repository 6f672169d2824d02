"""JSON-Schema forms (draft 2020-12) of user tasks and start events.

A user task or start event names its form with ``camunda:formKey``; the pack's ``forms/`` directory
holds ``<formKey>.json`` (the schema, an object schema) and optionally ``<formKey>.ui.json`` (layout
hints for clients, returned as ``uiSchema``).

Submitted variables are checked before anything changes:

- only properties the form declares may be submitted (its ``properties`` are the allow-list, with or
  without ``additionalProperties: false``): unknown keys are rejected, never merged;
- the values must satisfy the schema (``jsonschema.Draft202012Validator``, with format checks);
- a ``readOnly`` property may be sent back unchanged (clients echo what they showed) but not changed.

Every problem is reported as a :class:`~itsmflow.engine.errors.FieldIssue` with a JSON path
(``$.reason``, ``$.items[0].name``); the caller gets one :class:`ValidationFailed` (HTTP 422).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from datetime import datetime

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError, ValidationError

from .errors import FieldIssue, SourceIssue, ValidationFailed
from .variables import RESERVED_NAMES

EMPTY_FORM_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _format_checker() -> FormatChecker:
    """jsonschema's format checks, plus RFC 3339 ``date-time`` without the optional dependency."""
    checker = FormatChecker()
    checker.checkers = dict(Draft202012Validator.FORMAT_CHECKER.checkers)
    if "date-time" not in checker.checkers:

        @checker.checks("date-time", raises=ValueError)
        def _date_time(value: object) -> bool:
            if not isinstance(value, str):
                return True
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", value):
                return False
            return datetime.fromisoformat(value.replace("z", "Z")).tzinfo is not None

    return checker


FORMAT_CHECKER = _format_checker()


def json_path(parts: Iterable[Any]) -> str:
    """``("items", 0, "name")`` → ``$.items[0].name`` (non-identifier keys as ``$['a b']``)."""
    out = "$"
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif _SIMPLE_KEY.match(str(p)):
            out += f".{p}"
        else:
            out += "[" + json.dumps(str(p)) + "]"
    return out


class Form:
    """A compiled form: schema, optional UI schema, and the submission check."""

    def __init__(self, key: str, schema: dict[str, Any], ui_schema: dict[str, Any] | None = None,
                 missing: dict[str, Any] | None = None) -> None:
        self.key = key
        self.schema = schema
        self.ui_schema = ui_schema
        #: values of fields neither submitted nor set yet (Camunda generated forms submit every field)
        self.missing = missing or {}
        self._validator = Draft202012Validator(schema, format_checker=FORMAT_CHECKER)

    @property
    def fields(self) -> dict[str, Any]:
        props = self.schema.get("properties")
        return props if isinstance(props, dict) else {}

    def read_only(self) -> set[str]:
        return {k for k, v in self.fields.items() if isinstance(v, dict) and v.get("readOnly") is True}

    def validate(self, submitted: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
        """The variables to write (declared, writable fields only); raises :class:`ValidationFailed`."""
        current = current or {}
        issues: list[FieldIssue] = []
        fields = self.fields
        for name in submitted:
            if name not in fields:
                issues.append(FieldIssue(json_path([name]), f"unknown field: form {self.key!r} does not declare it"))
        read_only = self.read_only()
        for name in sorted(read_only & set(submitted)):
            if submitted[name] != current.get(name):
                issues.append(FieldIssue(json_path([name]), "read-only field: it cannot be changed"))
        # validate what the instance would hold for the form: current values overlaid with the submission
        candidate = {k: current[k] for k in fields if k in current and k not in submitted and k in read_only}
        candidate.update({k: v for k, v in submitted.items() if k in fields})
        for error in sorted(self._validator.iter_errors(candidate), key=_error_order):
            issues.extend(_issues(error))
        if issues:
            seen: set[tuple[str, str]] = set()
            unique = [i for i in issues if (i.path, i.message) not in seen and not seen.add((i.path, i.message))]
            detail = "; ".join(f"{i.path}: {i.message}" for i in unique[:10])
            raise ValidationFailed(f"the submitted data does not match form {self.key!r}: {detail}", unique)
        out = {k: v for k, v in submitted.items() if k in fields and k not in read_only}
        for name, value in self.missing.items():
            if name not in out and name not in current:
                out[name] = value
        return out

    def values(self, data: dict[str, Any]) -> dict[str, Any]:
        """The current values of the form's fields (what a client pre-fills)."""
        return {k: data[k] for k in self.fields if k in data}

    def view(self, data: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.schema}
        if self.ui_schema is not None:
            out["uiSchema"] = self.ui_schema
        if data is not None:
            out["data"] = self.values(data)
        return out


def _error_order(error: ValidationError) -> tuple:
    return (tuple(str(p) for p in error.absolute_path), error.message)


def _issues(error: ValidationError) -> list[FieldIssue]:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        # point at the missing property itself: "$.reason: required"
        missing = [p for p in (error.validator_value or []) if p not in error.instance]
        return [FieldIssue(json_path(path + [p]), "is required") for p in missing] or [
            FieldIssue(json_path(path), error.message)]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        props = (error.schema or {}).get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = [k for k in error.instance if k not in props]
        return [FieldIssue(json_path(path + [k]), "unknown field") for k in extra] or [
            FieldIssue(json_path(path), error.message)]
    return [FieldIssue(json_path(path), _short(error.message))]


def _short(message: str) -> str:
    return message if len(message) <= 300 else message[:297] + "..."


# -- loading a forms directory (packs) -----------------------------------------------------------
def load_forms(directory: Path, display: str) -> tuple[dict[str, dict[str, Any]], list[SourceIssue]]:
    """Every ``<key>.json`` (+ optional ``<key>.ui.json``) under ``directory`` → ``{key: {schema, uiSchema}}``."""
    forms: dict[str, dict[str, Any]] = {}
    issues: list[SourceIssue] = []
    if not directory.is_dir():
        return forms, [SourceIssue(display, None, None, "forms directory does not exist")]
    for path in sorted(directory.rglob("*.json")):
        if path.name.endswith(".ui.json"):
            continue
        key = path.name[: -len(".json")]
        where = f"{display}/{path.relative_to(directory)}"
        schema, issue = _read_json(path, where)
        if issue:
            issues.append(issue)
            continue
        problems = check_form_schema(schema)
        if problems:
            issues.extend(SourceIssue(where, None, None, p) for p in problems)
            continue
        if key in forms:
            issues.append(SourceIssue(where, None, None, f"form key {key!r} is defined twice"))
            continue
        ui = None
        ui_path = path.with_name(key + ".ui.json")
        if ui_path.is_file():
            ui, issue = _read_json(ui_path, f"{display}/{ui_path.relative_to(directory)}")
            if issue:
                issues.append(issue)
                continue
            if not isinstance(ui, dict):
                issues.append(SourceIssue(f"{display}/{ui_path.relative_to(directory)}", None, None,
                                          "a UI schema must be a JSON object"))
                continue
        forms[key] = {"schema": schema, "uiSchema": ui}
    return forms, issues


def _read_json(path: Path, where: str) -> tuple[Any, SourceIssue | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except json.JSONDecodeError as exc:
        return None, SourceIssue(where, exc.lineno, exc.colno, f"not valid JSON: {exc.msg}")
    except (OSError, UnicodeDecodeError) as exc:
        return None, SourceIssue(where, None, None, f"cannot read: {exc}")


def check_form_schema(schema: Any) -> list[str]:
    """Problems that make a schema unusable as a form (empty list when fine)."""
    if not isinstance(schema, dict):
        return ["a form must be a JSON object (a JSON Schema)"]
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = json_path(exc.absolute_path)
        return [f"not a valid JSON Schema (draft 2020-12) at {where}: {_short(exc.message)}"]
    if schema.get("type") != "object":
        return ['a form schema must have "type": "object"']
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        return ['"properties" must be an object']
    out = []
    for name in props:
        if not name.isidentifier() or name.startswith("_"):
            out.append(f"field {name!r}: field names become process variables and must be identifiers "
                       "not starting with _")
        elif name in RESERVED_NAMES or name == "policies":
            out.append(f"field {name!r}: the name is reserved by the engine")
    return out


# -- Camunda generated forms (camunda:formData / camunda:formField) -----------------------------------
#: Camunda 7 form field types -> JSON Schema
FORMFIELD_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "long": {"type": "integer"},
    "integer": {"type": "integer"},
    "short": {"type": "integer"},
    "double": {"type": "number"},
    "boolean": {"type": "boolean"},
    "date": {"type": "string", "format": "date-time"},
    "enum": {"type": "string"},
}
#: Camunda 7 built-in validation constraints -> JSON Schema keyword (None: handled specially)
FORMFIELD_CONSTRAINTS = {"required": None, "readonly": None, "minlength": "minLength", "maxlength": "maxLength",
                         "min": "minimum", "max": "maximum"}


def formfield_problems(field: dict[str, Any]) -> list[str]:
    """Why a ``camunda:formField`` (as extracted into the process model) cannot become a form field."""
    out = []
    fid, ftype = field.get("id"), field.get("type") or "string"
    if not isinstance(fid, str) or not fid.isidentifier() or fid.startswith("_"):
        out.append(f"camunda:formField id {fid!r} must be a variable name (an identifier not starting with _)")
    elif fid in RESERVED_NAMES or fid == "policies":
        out.append(f"camunda:formField '{fid}': the name is reserved by the engine")
    if ftype not in FORMFIELD_TYPES:
        out.append(f"camunda:formField '{fid}': type {ftype!r} is not supported "
                   f"(supported: {', '.join(sorted(FORMFIELD_TYPES))})")
        return out
    for c in field.get("validation") or []:
        name, config = c.get("name"), c.get("config")
        if name not in FORMFIELD_CONSTRAINTS:
            out.append(f"camunda:formField '{fid}': validation constraint {name!r} is not supported "
                       f"(supported: {', '.join(FORMFIELD_CONSTRAINTS)})")
        elif FORMFIELD_CONSTRAINTS[name] is not None:
            try:
                float(config) if name in ("min", "max") else int(config)
            except (TypeError, ValueError):
                out.append(f"camunda:formField '{fid}': constraint {name} needs a number, not {config!r}")
    default = field.get("default_value")
    if default is not None and "${" not in default and "#{" not in default:
        try:
            _typed_default(ftype, default)
        except ValueError as exc:
            out.append(f"camunda:formField '{fid}': defaultValue {default!r}: {exc}")
    return out


def _typed_default(ftype: str, value: str) -> Any:
    if ftype in ("long", "integer", "short"):
        return int(value)
    if ftype == "double":
        return float(value)
    if ftype == "boolean":
        if value not in ("true", "false"):
            raise ValueError("a boolean default must be true or false")
        return value == "true"
    return value


def formfield_schema(fields: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``camunda:formField`` list (``ProcessModel`` form fields) -> (JSON Schema, uiSchema or None).

    Types map as in :data:`FORMFIELD_TYPES`; ``enum`` values become ``enum`` (their names go to the
    uiSchema as ``ui:enumNames``); constraints ``required``, ``readonly``, ``minlength``, ``maxlength``,
    ``min``, ``max`` map to ``required``, ``readOnly``, ``minLength``, ``maxLength``, ``minimum``,
    ``maximum``; a literal ``defaultValue`` becomes ``default``; ``label`` becomes ``title``.
    Call :func:`formfield_problems` first (deploy time): this assumes valid fields. As with Camunda's
    generated forms (which submit every field), a field not submitted is set to its default or null."""
    props: dict[str, Any] = {}
    required: list[str] = []
    ui: dict[str, Any] = {"ui:order": []}
    for field in fields:
        fid, ftype = field["id"], field.get("type") or "string"
        prop: dict[str, Any] = dict(FORMFIELD_TYPES[ftype])
        if field.get("label"):
            prop["title"] = field["label"]
        if ftype == "enum":
            values = field.get("values") or []
            prop["enum"] = [v.get("id") for v in values]
            ui[fid] = {"ui:enumNames": [v.get("name") or v.get("id") for v in values]}
        default = field.get("default_value")
        if default is not None and "${" not in default and "#{" not in default:
            prop["default"] = _typed_default(ftype, default)
        for c in field.get("validation") or []:
            name, config = c.get("name"), c.get("config")
            if name == "required":
                required.append(fid)
            elif name == "readonly":
                prop["readOnly"] = True
            elif name in ("minlength", "maxlength"):
                prop[FORMFIELD_CONSTRAINTS[name]] = int(config)
            elif name in ("min", "max"):
                number = float(config)
                prop[FORMFIELD_CONSTRAINTS[name]] = int(number) if number.is_integer() else number
        props[fid] = prop
        ui["ui:order"].append(fid)
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema, ui


# -- the service: forms of tasks and start events, and the checks on submissions ---------------------
class FormService:
    """Forms come from the pack rules of the definition version (:class:`~itsmflow.engine.rules.Rules`);
    without one, from the ``camunda:formField`` elements of the task or start event (Camunda generated
    forms, :func:`formfield_schema`). A ``formKey`` naming neither (e.g. an embedded HTML form of a
    definition deployed without a pack) is not checked."""

    def __init__(self, repository: Any, tasks: Any, rules: Any) -> None:
        self._repository = repository
        self._tasks = tasks
        self._rules = rules
        self._generated: dict[tuple[str, str | None], Form | None] = {}  # definitions are immutable

    def _generated_form(self, definition_id: str, task_key: str | None) -> Form | None:
        """The form generated from ``camunda:formField`` of a user task (or, for None, the start event)."""
        cache_key = (definition_id, task_key)
        if cache_key not in self._generated:
            model = self._repository.model(definition_id)
            if task_key is None:
                fields = model.get("start_form_fields") or []
            else:
                fields = ((model.get("user_tasks") or {}).get(task_key) or {}).get("form_fields") or []
            form = None
            if fields:
                schema, ui = formfield_schema(fields)
                missing = {name: prop.get("default") for name, prop in schema["properties"].items()
                           if not prop.get("readOnly")}
                form = Form(f"{task_key or 'start'} (camunda:formData)", schema, ui, missing)
            self._generated[cache_key] = form
        return self._generated[cache_key]

    def _task_form_of(self, task: Any, session: Any = None) -> Form | None:
        rules = self._rules.get(task.definition_id, session)
        form = rules.form(task.form_key) if rules is not None else None
        return form if form is not None else self._generated_form(task.definition_id, task.task_definition_key)

    def start_form(self, key: str) -> dict[str, Any]:
        """``{schema, uiSchema?}`` of the latest version's start form (an empty object schema if none)."""
        info = self._repository.latest(key)
        form = self._start_form_of(info.id)
        return form.view() if form is not None else {"schema": dict(EMPTY_FORM_SCHEMA)}

    def task_form(self, task_id: str) -> dict[str, Any]:
        """``{schema, uiSchema?, data}``: data holds the current values of the form's fields (all visible
        variables when the task has no form); during sign-off, the submitted result."""
        task = self._tasks.get(task_id)
        data = self._tasks.variables(task_id)
        pending = self._tasks.pending_variables(task_id) if task.phase == "signoff" else None
        if pending:
            data = {**data, **pending}
        form = self._task_form_of(task)
        if form is None:
            return {"schema": dict(EMPTY_FORM_SCHEMA), "data": data}
        return form.view(data)

    def _start_form_of(self, definition_id: str) -> Form | None:
        rules = self._rules.get(definition_id)
        if rules is not None and rules.start_form:
            form = rules.form(rules.start_form)
            if form is not None:
                return form
        return self._generated_form(definition_id, None)

    # -- checks ------------------------------------------------------------------------------
    def completion_check(self, ex: Any, task: Any, principal: Any, values: dict[str, Any]) -> dict[str, Any]:
        """``TaskService.completion_checks`` hook: validate against the task's form."""
        form = self._task_form_of(task, ex.session)
        if form is None:
            return values
        current = ex.ready_task(task.id).data
        return form.validate(values, current)

    def start_check(self, definition_id: str, variables: dict[str, Any]) -> dict[str, Any]:
        """``RuntimeService.start_checks`` hook: validate the start variables against the start form."""
        form = self._start_form_of(definition_id)
        return form.validate(variables) if form is not None else variables
