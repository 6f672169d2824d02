"""Process packs: load a pack directory, check it, deploy it with its rules (see docs/packs.md).

A pack is data, not code: ``pack.yaml`` (the manifest, validated against ``pack.schema.json``), BPMN
and DMN files, JSON-Schema forms, ``raci.yaml``, ``sod.yaml`` and policies. Nothing here knows any
particular pack; packs are read at run time from a directory.

:func:`load_pack` checks everything and reports every problem as ``file:line:column: message``
(:class:`PackInvalid`): the manifest against its schema; the BPMN files (the repository's full
validation); that every listed process exists; forms; every task id and role of the RACI and SoD files
against the BPMN and the pack's roles; that every human task has someone responsible; policies against
their schemas; declared interfaces against the messages the processes throw and catch.

:meth:`PackService.apply` deploys a loaded pack: each process becomes a definition version whose
identity is its BPMN bytes *plus* its rules (so changed rules make a new version and running instances
keep the rules they started with), the rules of each new version are stored with it in the deploy
transaction (``definition_rules``), and the application is recorded in ``pack`` / ``pack_definition``.
Applying the same pack again changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .bpmn.metadata import lane_map
from .bpmn.xml import XmlDocument, parse_document
from .clock import iso, utcnow
from .directory import Directory, DirectoryError
from .errors import DeploymentInvalid, Forbidden, SourceIssue
from .forms import load_forms
from .identity import Principal
from .policies import load_policy
from .raci import human_tasks, parse_raci
from .repository import DefinitionInfo, RepositoryService
from .rules import RaciEntry, Rules, RulesStore, SodRule
from .sod import parse_sod
from .storage.models import DefinitionRules as DefinitionRulesRow
from .storage.models import Pack as PackRow
from .storage.models import PackDefinition, ProcessDefinition
from .yamlsrc import YamlSource, schema_issues

log = logging.getLogger("itsmflow.packs")

MANIFEST = "pack.yaml"
_VAR_REF = re.compile(r"^\$\{.*\}$")
_ROLE_LIKE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class PackInvalid(DeploymentInvalid):
    """A pack was refused; ``issues`` lists every problem with file, line and column."""

    title = "Invalid process pack"


@dataclass
class PackProcess:
    key: str
    bpmn: str  # as written in pack.yaml
    resource: str  # file name of the deployed resource
    clause: str | None = None
    title: str | None = None


@dataclass
class Pack:
    """A loaded and checked pack, ready to deploy."""

    name: str
    version: str
    title: str | None
    standard: str | None
    directory: Path
    roles: dict[str, str | None]
    processes: list[PackProcess]
    files: list[tuple[str, bytes]]  # (resource name, bytes): BPMN and DMN
    parsed: Any  # ParsedDeployment
    rules: dict[str, Rules]  # by process key (every executable process of the pack's files)
    interfaces: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[SourceIssue] = field(default_factory=list)
    forms: dict[str, dict[str, Any]] = field(default_factory=dict)  # every form of the pack, by key

    @property
    def keys(self) -> list[str]:
        return list(self.rules)

    def manifest(self) -> dict[str, Any]:
        """What is stored with an application of the pack (and shown by the API)."""
        return {
            "name": self.name,
            "version": self.version,
            "title": self.title,
            "standard": self.standard,
            "roles": self.roles,
            "processes": [{"key": p.key, "resource": p.resource, "clause": p.clause, "title": p.title}
                          for p in self.processes],
            "interfaces": self.interfaces,
            "rules": {k: r.as_dict() for k, r in sorted(self.rules.items())},
        }

    def content_hash(self, organisation: str | None = None) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.manifest(), sort_keys=True, separators=(",", ":")).encode())
        for fname, data in sorted(self.files):
            h.update(fname.encode() + b"\0" + hashlib.sha256(data).digest())
        h.update((organisation or "").encode())
        return h.hexdigest()


@dataclass
class Organisation:
    """The organisation a pack is applied for: its directory; tailoring overlays come later."""

    name: str | None
    directory: Path | None
    tailoring: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, org_dir: Path | None) -> "Organisation":
        if org_dir is None:
            return cls(None, None)
        org_dir = Path(org_dir)
        name = org_dir.name
        meta = org_dir / "organisation.yaml"
        if meta.is_file():
            src = YamlSource.read(meta, str(meta))
            if not src.ok:
                raise PackInvalid(src.issues)
            if isinstance(src.data, dict) and isinstance(src.data.get("name"), str):
                name = src.data["name"]
        return cls(name, org_dir)


@dataclass
class PackApplyResult:
    name: str
    version: str
    organisation: str | None
    definitions: list[DefinitionInfo]
    created: bool  # False when the same pack (same content) had been applied already
    warnings: list[str] = field(default_factory=list)


@dataclass
class PackView:
    id: str
    name: str
    version: str
    organisation: str | None
    title: str | None
    applied_at: datetime
    applied_by: str | None
    definitions: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "version": self.version, "organisation": self.organisation,
                "title": self.title, "appliedAt": iso(self.applied_at), "appliedBy": self.applied_by,
                "definitions": self.definitions}


# -- loading ----------------------------------------------------------------------------------------
def _display(path: Path, base: Path) -> str:
    """A path for messages: relative to the pack directory when possible."""
    try:
        return os.path.normpath(os.path.relpath(path, base))
    except ValueError:  # pragma: no cover - other drive on Windows
        return str(path)


def load_pack(pack_dir: Path, *, schema_path: Path, repository: RepositoryService) -> Pack:
    """Load and check a pack directory; raises :class:`PackInvalid` listing every problem."""
    pack_dir = Path(pack_dir)
    manifest_path = pack_dir / MANIFEST
    if not manifest_path.is_file():
        raise PackInvalid([SourceIssue(str(manifest_path), None, None, "pack manifest not found")])
    src = YamlSource.read(manifest_path, MANIFEST)
    if not src.ok:
        raise PackInvalid(src.issues)
    try:
        schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackInvalid([SourceIssue(str(schema_path), None, None, f"cannot read the pack schema: {exc}")]) from exc
    issues = schema_issues(src, schema)
    if issues:
        raise PackInvalid(issues)
    m: dict[str, Any] = src.data
    roles: dict[str, str | None] = dict(m["roles"])
    role_ids = set(roles)

    # BPMN and DMN files
    files: list[tuple[str, bytes]] = []
    resource_of: dict[Path, str] = {}
    display_of: dict[str, str] = {}  # resource name -> path for messages
    processes: list[PackProcess] = []
    seen_keys: dict[str, int] = {}

    def add_file(rel: str, where: list[Any]) -> str | None:
        path = (pack_dir / rel).resolve()
        if path in resource_of:
            return resource_of[path]
        if not path.is_file():
            issues.append(src.issue(where, f"file not found: {rel}"))
            return None
        resource = path.name
        if resource in display_of:
            issues.append(src.issue(where, f"two files are named {resource!r}; file names must be unique in a pack"))
            return None
        resource_of[path] = resource
        display_of[resource] = _display(path, pack_dir)
        files.append((resource, path.read_bytes()))
        return resource

    for i, proc in enumerate(m.get("processes") or []):
        if proc["key"] in seen_keys:
            issues.append(src.issue(["processes", i, "key"], f"process {proc['key']!r} is listed twice"))
            continue
        seen_keys[proc["key"]] = i
        resource = add_file(proc["bpmn"], ["processes", i, "bpmn"])
        if resource:
            processes.append(PackProcess(proc["key"], proc["bpmn"], resource, proc.get("clause"), proc.get("title")))
    for i, rel in enumerate(m.get("decisions") or []):
        add_file(rel, ["decisions", i])
    if issues:
        raise PackInvalid(issues)
    if not files:
        parsed = None
        models: dict[str, dict[str, Any]] = {}
    else:
        try:
            parsed = repository.validate(files)
        except DeploymentInvalid as exc:
            raise PackInvalid([SourceIssue(display_of.get(i.file, i.file), i.line, i.column, i.message)
                               for i in exc.issues]) from exc
        models = {k: v.as_dict() for k, v in parsed.processes.items()}
    for proc in processes:
        if proc.key not in models:
            why = (parsed.non_executable_reasons.get(proc.key) if parsed else None) or \
                f"{display_of.get(proc.resource, proc.resource)} defines no executable process with that id"
            issues.append(src.issue(["processes", seen_keys[proc.key], "key"], f"process {proc.key!r}: {why}"))
    bpmn_files = {k: display_of.get(v["file"], v["file"]) for k, v in models.items()}
    docs: dict[str, XmlDocument] = {}

    def doc_of(key: str) -> XmlDocument | None:
        resource = models[key]["file"]
        if resource not in docs:
            docs[resource] = parse_document(resource, dict(files)[resource])[0]
        return docs[resource]

    def bpmn_issue(key: str, element_id: str | None, message: str) -> SourceIssue:
        doc = doc_of(key)
        line, col = doc.locate(doc.by_id(element_id)) if doc is not None else (None, None)
        resource = models[key]["file"]
        return SourceIssue(display_of.get(resource, resource), line, col, message)

    def lanes_of(key: str) -> dict[str, tuple[str | None, str | None]]:
        doc = doc_of(key)
        process_el = doc.by_id(key) if doc is not None else None
        return lane_map(process_el)[0] if process_el is not None else {}

    # forms
    forms: dict[str, dict[str, Any]] = {}
    if m.get("forms"):
        forms, form_issues = load_forms(pack_dir / m["forms"], _display(pack_dir / m["forms"], pack_dir))
        issues.extend(form_issues)
    form_refs: dict[str, list[str]] = {}
    for key, model in models.items():
        refs: list[str] = []
        start_key = model.get("start_form_key")
        if start_key:
            refs.append(start_key)
            if start_key not in forms:
                issues.append(bpmn_issue(key, _start_event_id(model), f"start form {start_key!r} of process {key!r} "
                                         f"is not in the pack's forms"))
        for task_id, task in (model.get("user_tasks") or {}).items():
            fk = task.get("form_key")
            if fk:
                refs.append(fk)
                if fk not in forms:
                    issues.append(bpmn_issue(key, task_id, f"user task {task_id!r}: form {fk!r} is not in the "
                                             "pack's forms"))
        form_refs[key] = refs

    # RACI and segregation of duties
    raci: dict[str, dict[str, RaciEntry]] = {}
    if m.get("raci"):
        raci_src = YamlSource.read(pack_dir / m["raci"], _display(pack_dir / m["raci"], pack_dir))
        raci, raci_issues = parse_raci(raci_src, role_ids, models, bpmn_files)
        issues.extend(raci_issues)
    sod: list[SodRule] = []
    if m.get("sod"):
        sod_src = YamlSource.read(pack_dir / m["sod"], _display(pack_dir / m["sod"], pack_dir))
        sod, sod_issues = parse_sod(sod_src, models, bpmn_files)
        issues.extend(sod_issues)

    # somebody is responsible for every human task, with roles the pack knows
    for key, model in models.items():
        lanes = lanes_of(key)
        for task_id, info in human_tasks(model).items():
            entry = raci.get(key, {}).get(task_id)
            if entry is not None and entry.responsible:
                continue
            meta = (model.get("user_tasks") or {}).get(task_id, {})
            groups = [g for g in meta.get("candidate_groups") or [] if not _VAR_REF.match(g)]
            for g in groups:
                if g not in role_ids:
                    issues.append(bpmn_issue(key, task_id, f"task {task_id!r}: candidate group {g!r} is not a "
                                             "role of the pack"))
            if meta.get("candidate_groups") or meta.get("candidate_users") or meta.get("assignee"):
                continue
            lane_id, lane = lanes.get(task_id, (None, None))
            role = next((v.strip() for v in (lane, lane_id) if v and _ROLE_LIKE.match(v.strip())), None)
            if role is None:
                issues.append(bpmn_issue(key, task_id, f"task {task_id!r} of process {key!r}: nobody is responsible "
                                         "(no RACI entry, no camunda:candidateGroups, no lane named by a role id)"))
            elif role not in role_ids:
                issues.append(bpmn_issue(key, task_id, f"task {task_id!r}: its lane {role!r} is not a role of the "
                                         "pack (lanes are named by role id)"))

    # policies
    policies: dict[str, Any] = {}
    for i, pol in enumerate(m.get("policies") or []):
        name = pol["name"]
        if name in policies:
            issues.append(src.issue(["policies", i, "name"], f"policy {name!r} is listed twice"))
            continue
        file = pack_dir / pol["file"]
        if not file.is_file():
            issues.append(src.issue(["policies", i, "file"], f"file not found: {pol['file']}"))
            continue
        schema_file = pack_dir / pol["schema"] if pol.get("schema") else None
        if schema_file is not None and not schema_file.is_file():
            issues.append(src.issue(["policies", i, "schema"], f"file not found: {pol['schema']}"))
            continue
        values, pol_issues = load_policy(name, file, _display(file, pack_dir), schema_file,
                                         _display(schema_file, pack_dir) if schema_file else None)
        issues.extend(pol_issues)
        policies[name] = values

    # interfaces: the messages one process throws and another catches
    for i, itf in enumerate(m.get("interfaces") or []):
        for end in ("from", "to"):
            if itf[end] not in models:
                issues.append(src.issue(["interfaces", i, end], f"unknown process {itf[end]!r}"))
        if itf["from"] in models and itf["message"] not in (models[itf["from"]].get("messages_thrown") or []):
            issues.append(src.issue(["interfaces", i, "message"], f"process {itf['from']!r} throws no message "
                                    f"{itf['message']!r}"))
        if itf["to"] in models and itf["message"] not in (models[itf["to"]].get("messages_caught") or []):
            issues.append(src.issue(["interfaces", i, "message"], f"process {itf['to']!r} catches no message "
                                    f"{itf['message']!r}"))

    if issues:
        raise PackInvalid(issues)

    rules: dict[str, Rules] = {}
    for key, model in models.items():
        rules[key] = Rules(
            pack_name=m["name"], pack_version=str(m["version"]), roles=sorted(role_ids),
            raci=dict(raci.get(key, {})), sod=[r for r in sod if r.process == key],
            forms={fk: forms[fk] for fk in sorted(set(form_refs.get(key, []))) if fk in forms},
            start_form=model.get("start_form_key"), policies=policies,
        )
    return Pack(
        name=m["name"], version=str(m["version"]), title=m.get("title"), standard=m.get("standard"),
        directory=pack_dir, roles=roles, processes=processes, files=files, parsed=parsed, rules=rules,
        interfaces=list(m.get("interfaces") or []),
        warnings=list(getattr(parsed, "warnings", []) or []),
        forms=forms,
    )


def _start_event_id(model: dict[str, Any]) -> str | None:
    for el_id, info in (model.get("activities") or {}).items():
        if info.get("type") == "startEvent" and not info.get("parent") and not info.get("event"):
            return el_id
    return None


# -- the service ------------------------------------------------------------------------------------
class PackService:
    def __init__(self, sessions: sessionmaker[Session], repository: RepositoryService, rules: RulesStore,
                 directory: Directory, *, schema_path: Path) -> None:
        self._sessions = sessions
        self._repository = repository
        self._rules = rules
        self.directory = directory
        self.schema_path = Path(schema_path)

    def load(self, pack_dir: Path) -> Pack:
        return load_pack(Path(pack_dir), schema_path=self.schema_path, repository=self._repository)

    def apply(self, pack_dir: Path, org_dir: Path | None = None, *, principal: Principal | None = None,
              actor: str | None = None) -> PackApplyResult:
        """Deploy a pack for an organisation (admins only when a principal is given)."""
        if principal is not None and not principal.is_admin:
            raise Forbidden("only users with the admin role may apply process packs")
        actor = actor or (principal.user_id if principal else "system")
        pack = self.load(pack_dir)
        org = Organisation.load(org_dir)
        if not pack.files:
            return PackApplyResult(pack.name, pack.version, org.name, [], created=False,
                                   warnings=["the pack has no processes"])

        def store_rules(session: Session, row: ProcessDefinition, _model: dict[str, Any]) -> None:
            rules = pack.rules.get(row.key)
            if rules is not None:
                session.add(DefinitionRulesRow(
                    definition_id=row.id, pack_name=pack.name, pack_version=pack.version,
                    rules_json=rules.to_json(), rules_hash=rules.content_hash(), created_at=utcnow(),
                ))

        identity = {key: f"pack-rules:{rules.content_hash()}" for key, rules in pack.rules.items()}
        deployment = self._repository.deploy(
            f"pack {pack.name} {pack.version}" + (f" ({org.name})" if org.name else ""), pack.files,
            actor=actor, source="pack", identity=identity, hooks=[store_rules], parsed=pack.parsed,
        )
        definitions = [d for d in deployment.definitions if d.key in pack.rules]
        created = self._record(pack, org, definitions, actor) or deployment.created
        warnings = self._warnings(pack, org)
        for w in warnings:
            log.warning("pack %s: %s", pack.name, w)
        return PackApplyResult(pack.name, pack.version, org.name, definitions, created, warnings)

    def _record(self, pack: Pack, org: Organisation, definitions: list[DefinitionInfo], actor: str | None) -> bool:
        content_hash = pack.content_hash(org.name)
        for _ in range(2):
            try:
                with self._sessions() as session, session.begin():
                    found = session.scalars(select(PackRow.id).where(
                        PackRow.name == pack.name, PackRow.content_hash == content_hash,
                        PackRow.organisation.is_(None) if org.name is None else PackRow.organisation == org.name,
                    )).first()
                    if found:
                        return False
                    row = PackRow(id=str(uuid.uuid4()), name=pack.name, version=pack.version, organisation=org.name,
                                  title=pack.title, content_hash=content_hash,
                                  manifest_json=json.dumps(pack.manifest(), sort_keys=True), applied_by=actor,
                                  created_at=utcnow())
                    session.add(row)
                    session.flush()
                    for d in definitions:
                        session.add(PackDefinition(pack_id=row.id, definition_id=d.id, key=d.key, version=d.version))
                    return True
            except IntegrityError:
                continue  # applied concurrently by another process: the row exists now
        return False

    def _warnings(self, pack: Pack, org: Organisation) -> list[str]:
        """Roles the RACI relies on that nobody holds (in the organisation's directory file when it has one,
        else in this engine's directory)."""
        directory = self.directory
        org_file = org.directory / "directory.yaml" if org.directory is not None else None
        if org_file is not None and org_file.is_file():
            try:
                directory = Directory.load(org_file)
            except DirectoryError as exc:
                return [f"cannot read {org_file}: {exc}"]
        if not directory.users:
            return []
        needed: dict[str, set[str]] = {}
        for key, rules in pack.rules.items():
            for task_id, e in rules.raci.items():
                for role in (*e.responsible, *e.required_consultations, *([e.accountable] if e.signoff else [])):
                    needed.setdefault(role, set()).add(f"{key}.{task_id}")
        out = []
        for role, where in sorted(needed.items()):
            if not directory.users_with_role(role):
                out.append(f"nobody in the directory holds role {role!r} (needed by {', '.join(sorted(where))})")
        return out

    # -- queries ------------------------------------------------------------------------------
    def list(self) -> list[PackView]:
        """The current application of every pack (the latest per pack name and organisation)."""
        with self._sessions() as session:
            rows = session.scalars(select(PackRow).order_by(PackRow.created_at.desc(), PackRow.id)).all()
            latest: dict[tuple[str, str | None], PackRow] = {}
            for r in rows:
                latest.setdefault((r.name, r.organisation), r)
            out = []
            for r in sorted(latest.values(), key=lambda r: (r.name, r.organisation or "")):
                defs = session.execute(select(PackDefinition.key, PackDefinition.version, PackDefinition.definition_id)
                                       .where(PackDefinition.pack_id == r.id)
                                       .order_by(PackDefinition.key)).all()
                out.append(PackView(r.id, r.name, r.version, r.organisation, r.title, r.created_at, r.applied_by,
                                    [{"key": k, "version": v, "id": i} for k, v, i in defs]))
            return out

    def rules(self, definition_id: str) -> Rules | None:
        return self._rules.get(definition_id)
