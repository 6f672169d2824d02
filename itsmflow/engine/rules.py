"""The pack rules of one definition version: RACI, segregation of duties, forms and policies.

A pack (:mod:`itsmflow.engine.packs`) is deployed as definition versions plus, for each version, one
``definition_rules`` row written in the same transaction. The rules are immutable like the spec:
an instance follows the rules of the version it started on, even after the pack is applied again
with different rules (which creates new versions). Definitions deployed without a pack have no
rules; every rule-driven feature is then a no-op and the BPMN alone decides.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from .storage.models import DefinitionRules as DefinitionRulesRow

CONSULTATION_REQUIRED = "required"
CONSULTATION_ADVISORY = "advisory"


@dataclass(frozen=True)
class RaciEntry:
    """RACI of one task: Responsible roles, Accountable role, Consulted and Informed roles."""

    responsible: tuple[str, ...] = ()
    accountable: str | None = None
    consulted: tuple[str, ...] = ()
    informed: tuple[str, ...] = ()
    consultation: str = CONSULTATION_REQUIRED  # required | advisory (only meaningful with consulted roles)
    signoff: bool = False

    @property
    def required_consultations(self) -> tuple[str, ...]:
        return self.consulted if self.consultation == CONSULTATION_REQUIRED else ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "responsible": list(self.responsible),
            "accountable": self.accountable,
            "consulted": list(self.consulted),
            "informed": list(self.informed),
            "consultation": self.consultation,
            "signoff": self.signoff,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RaciEntry":
        return cls(
            responsible=tuple(raw.get("responsible") or ()),
            accountable=raw.get("accountable"),
            consulted=tuple(raw.get("consulted") or ()),
            informed=tuple(raw.get("informed") or ()),
            consultation=raw.get("consultation") or CONSULTATION_REQUIRED,
            signoff=bool(raw.get("signoff", False)),
        )


@dataclass(frozen=True)
class SodRule:
    """A segregation-of-duties rule: who may not work on the guarded tasks of an instance.

    Subjects in ``not_same_as``: ``initiator`` (the user who started the instance) and
    ``task:<bpmn id>`` (whoever completed that task in the same instance).
    """

    id: str
    description: str
    process: str
    tasks: tuple[str, ...]
    not_same_as: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "process": self.process,
                "tasks": list(self.tasks), "not_same_as": list(self.not_same_as)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "SodRule":
        return cls(raw["id"], raw.get("description") or raw["id"], raw.get("process") or "",
                   tuple(raw.get("tasks") or ()), tuple(raw.get("not_same_as") or ()))


@dataclass
class Rules:
    """Everything a running instance needs from its pack (per definition version)."""

    pack_name: str
    pack_version: str
    roles: list[str] = field(default_factory=list)
    raci: dict[str, RaciEntry] = field(default_factory=dict)
    sod: list[SodRule] = field(default_factory=list)
    forms: dict[str, dict[str, Any]] = field(default_factory=dict)  # formKey -> {"schema", "uiSchema"}
    start_form: str | None = None
    policies: dict[str, Any] = field(default_factory=dict)
    # organisation tailoring: pack role id -> the organisation's role name. The RACI above is already
    # written in the organisation's names; this maps the roles the BPMN names at run time (lanes,
    # camunda:candidateGroups, also from variables). Empty without tailoring.
    role_map: dict[str, str] = field(default_factory=dict)
    _validators: dict[str, Any] = field(default_factory=dict, repr=False)

    def entry(self, task_key: str) -> RaciEntry | None:
        return self.raci.get(task_key)

    def sod_rules(self, task_key: str) -> list[SodRule]:
        return [r for r in self.sod if task_key in r.tasks]

    def form(self, form_key: str | None) -> Any:
        """The compiled form (:class:`itsmflow.engine.forms.Form`) for ``form_key``, or None."""
        if not form_key or form_key not in self.forms:
            return None
        form = self._validators.get(form_key)
        if form is None:
            from .forms import Form

            raw = self.forms[form_key]
            form = Form(form_key, raw["schema"], raw.get("uiSchema"))
            self._validators[form_key] = form
        return form

    def as_dict(self) -> dict[str, Any]:
        out = {
            "pack": {"name": self.pack_name, "version": self.pack_version},
            "roles": list(self.roles),
            "raci": {k: v.as_dict() for k, v in sorted(self.raci.items())},
            "sod": [r.as_dict() for r in self.sod],
            "forms": dict(sorted(self.forms.items())),
            "start_form": self.start_form,
            "policies": self.policies,
        }
        if self.role_map:  # only when tailored: untailored rules keep their identity (content_hash)
            out["role_map"] = dict(sorted(self.role_map.items()))
        return out

    def map_role(self, role: str) -> str:
        """The organisation's name for a pack role id (the id itself when not mapped)."""
        return self.role_map.get(role, role)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Rules":
        pack = raw.get("pack") or {}
        return cls(
            pack_name=pack.get("name", ""),
            pack_version=pack.get("version", ""),
            roles=list(raw.get("roles") or []),
            raci={k: RaciEntry.from_dict(v) for k, v in (raw.get("raci") or {}).items()},
            sod=[SodRule.from_dict(r) for r in raw.get("sod") or []],
            forms=dict(raw.get("forms") or {}),
            start_form=raw.get("start_form"),
            policies=dict(raw.get("policies") or {}),
            role_map=dict(raw.get("role_map") or {}),
        )

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))

    def content_hash(self) -> str:
        """Identity of the rules (the pack version is not part of it: only what the rules say)."""
        raw = self.as_dict()
        raw.pop("pack", None)
        return hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RulesStore:
    """Rules by definition id, cached forever (definition versions and their rules are immutable)."""

    _MISSING = object()

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, definition_id: str, session: Session | None = None) -> Rules | None:
        item = self._items.get(definition_id, None)
        if item is not None:
            return None if item is self._MISSING else item
        if session is None:
            with self._sessions() as own:
                row = own.get(DefinitionRulesRow, definition_id)
        else:
            row = session.get(DefinitionRulesRow, definition_id)
        value: Any = Rules.from_dict(json.loads(row.rules_json)) if row is not None else self._MISSING
        with self._lock:
            self._items.setdefault(definition_id, value)
        value = self._items[definition_id]
        return None if value is self._MISSING else value

    def forget(self, definition_id: str) -> None:
        with self._lock:
            self._items.pop(definition_id, None)
