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
from .policies import check_tailored_policy, load_policy, merge_values, read_policy_schema
from .raci import human_tasks, map_roles, override_raci, parse_raci
from .repository import DefinitionInfo, RepositoryService
from .rules import RaciEntry, Rules, RulesStore, SodRule
from .sod import parse_sod
from .tailoring import TAILORING_FILE, TAILORING_SCHEMA, Tailoring, display_path, flow_node_ids, read_tailoring, rename
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
    title: str | None = None  # the organisation's title when its tailoring renames the process
    pack_title: str | None = None  # the pack's title


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
    # the organisation's tailoring (docs/tailoring.md); None/empty for the pack as it is
    tailoring: dict[str, Any] | None = None  # summary: what the tailoring changes (stored, GET /api/packs)
    role_map: dict[str, str] = field(default_factory=dict)  # pack role id -> organisation role
    extra_roles: dict[str, str | None] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)  # process keys not deployed
    # the effective content before role mapping (pack role ids), for pack diff
    raci: dict[str, dict[str, RaciEntry]] = field(default_factory=dict)
    sod: list[SodRule] = field(default_factory=list)
    policies: dict[str, Any] = field(default_factory=dict)
    form_origin: dict[str, str] = field(default_factory=dict)  # form key -> pack | replaced | added
    bpmn_files: dict[str, str] = field(default_factory=dict)  # process key -> file (display path)
    notes: list[str] = field(default_factory=list)  # warnings of the tailoring (pack apply prints them)

    @property
    def keys(self) -> list[str]:
        return list(self.rules)

    def manifest(self) -> dict[str, Any]:
        """What is stored with an application of the pack (and shown by the API)."""
        out = {
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
        if self.tailoring is not None:
            out["tailoring"] = self.tailoring
        return out

    def content_hash(self, organisation: str | None = None) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.manifest(), sort_keys=True, separators=(",", ":")).encode())
        for fname, data in sorted(self.files):
            h.update(fname.encode() + b"\0" + hashlib.sha256(data).digest())
        h.update((organisation or "").encode())
        return h.hexdigest()


@dataclass
class Organisation:
    """The organisation a pack is applied for: its directory (``orgs/<name>/``), which may hold
    ``directory.yaml`` (its users), ``tailoring.yaml`` (docs/tailoring.md) and ``organisation.yaml``."""

    name: str | None
    directory: Path | None

    @property
    def tailoring_file(self) -> Path | None:
        if self.directory is None:
            return None
        path = self.directory / TAILORING_FILE
        return path if path.is_file() else None

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
    new_versions: list[str] = field(default_factory=list)  # keys that got a new definition version
    tailoring: dict[str, Any] | None = None


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
    tailoring: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "version": self.version, "organisation": self.organisation,
                "title": self.title, "appliedAt": iso(self.applied_at), "appliedBy": self.applied_by,
                "definitions": self.definitions, "tailoring": self.tailoring}


# -- loading ----------------------------------------------------------------------------------------
def _display(path: Path, base: Path) -> str:
    """A path for messages: relative to the pack directory when possible."""
    try:
        return os.path.normpath(os.path.relpath(path, base))
    except ValueError:  # pragma: no cover - other drive on Windows
        return str(path)


def load_pack(pack_dir: Path, *, schema_path: Path, repository: RepositoryService,
              org_dir: Path | None = None) -> Pack:
    """Load and check a pack directory, tailored for the organisation in ``org_dir`` when it has a
    ``tailoring.yaml`` (docs/tailoring.md); raises :class:`PackInvalid` listing every problem."""
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
    warnings: list[str] = []

    # the organisation's tailoring: its own structure, and what it names in the pack
    tl: Tailoring | None = None
    if org_dir is not None:
        tl, tl_issues = read_tailoring(Path(org_dir), pack_dir, Path(schema_path).with_name(TAILORING_SCHEMA))
        if tl_issues:
            raise PackInvalid(tl_issues)
    role_map: dict[str, str] = {}
    extra_roles: dict[str, str | None] = {}
    disabled: set[str] = set()
    tl_processes: dict[str, dict[str, Any]] = {}
    if tl is not None:
        if tl.data.get("pack") is not None and tl.data["pack"] != m["name"]:
            issues.append(tl.issue(["pack"], f"this tailoring is for pack {tl.data['pack']!r}, not {m['name']!r}"))
        if tl.data.get("based_on") is not None and str(tl.data["based_on"]) != str(m["version"]):
            warnings.append(f"{tl.display}: written for pack version {tl.data['based_on']}, applied to "
                            f"{m['version']}: review it (itsmflow pack diff --against)")
        for role, target in tl.role_map.items():
            if role not in role_ids:
                issues.append(tl.issue(["roles", role], f"unknown role {role!r}: not a role of pack {m['name']!r} "
                                       f"(roles: {', '.join(sorted(role_ids))})", key=True))
            else:
                role_map[role] = target
        for role, desc in tl.extra_roles.items():
            if role in role_ids:
                issues.append(tl.issue(["extra_roles", role], f"{role!r} is a role of the pack already; map it "
                                       "under 'roles' instead", key=True))
            else:
                extra_roles[role] = desc
        listed = {p["key"] for p in m.get("processes") or []}
        for key, entry in tl.processes.items():
            if key not in listed:
                issues.append(tl.issue(["processes", key], f"unknown process {key!r}: pack {m['name']!r} has "
                                       f"{', '.join(sorted(listed)) or 'no processes'}", key=True))
                continue
            if entry.get("disabled") and len(set(entry) - {"disabled", "description"}) > 0:
                issues.append(tl.issue(["processes", key, "disabled"], f"process {key!r} is disabled: it cannot "
                                       "also be renamed or replaced"))
            if entry.get("disabled"):
                disabled.add(key)
            tl_processes[key] = entry
        if issues:
            raise PackInvalid(issues)

    # BPMN and DMN files
    files: list[tuple[str, bytes]] = []
    resource_of: dict[Path, str] = {}
    display_of: dict[str, str] = {}  # resource name -> path for messages
    processes: list[PackProcess] = []
    seen_keys: dict[str, int] = {}
    replaced: dict[str, str] = {}  # process key -> the organisation's BPMN (display path)
    renamed: dict[str, bytes] = {}  # resource name -> bytes with the organisation's names

    def add_file(rel: str, where: list[Any], base: Path = pack_dir, in_src: Any = src) -> str | None:
        path = (base / rel).resolve()
        if path in resource_of:
            return resource_of[path]
        if not path.is_file():
            issues.append(in_src.issue(where, f"file not found: {rel}"))
            return None
        resource = path.name
        if resource in display_of:
            issues.append(in_src.issue(where, f"two files are named {resource!r}; file names must be unique in a "
                                              "pack"))
            return None
        resource_of[path] = resource
        display_of[resource] = display_path(path, pack_dir)
        files.append((resource, path.read_bytes()))
        return resource

    for i, proc in enumerate(m.get("processes") or []):
        key = proc["key"]
        if key in seen_keys:
            issues.append(src.issue(["processes", i, "key"], f"process {key!r} is listed twice"))
            continue
        seen_keys[key] = i
        if key in disabled:
            continue
        tailored = tl_processes.get(key, {})
        if tailored.get("bpmn"):
            base_file = (pack_dir / proc["bpmn"]).resolve()
            if tailored.get("base_sha256") and base_file.is_file() and \
                    hashlib.sha256(base_file.read_bytes()).hexdigest() != tailored["base_sha256"]:
                warnings.append(f"{tl.display}: process {key!r}: the replaced BPMN was made from another version "
                                f"of {proc['bpmn']} (base_sha256 differs): review it against the pack's")
            resource = add_file(tailored["bpmn"], ["processes", key, "bpmn"], tl.org_dir, tl)
            if resource:
                replaced[key] = display_of[resource]
        else:
            resource = add_file(proc["bpmn"], ["processes", i, "bpmn"])
        if resource:
            processes.append(PackProcess(key, proc["bpmn"], resource, proc.get("clause"),
                                         tailored.get("title") or proc.get("title"), proc.get("title")))
    for i, rel in enumerate(m.get("decisions") or []):
        add_file(rel, ["decisions", i])
    if issues:
        raise PackInvalid(issues)

    # the organisation's names of processes and tasks: written into the BPMN bytes (ids stay)
    if tl is not None:
        data_of = dict(files)
        for proc in processes:
            tailored = tl_processes.get(proc.key, {})
            names = dict(tailored.get("tasks") or {})
            if not names and not tailored.get("title"):
                continue
            new, unknown = rename(data_of[proc.resource], proc.key, tailored.get("title"), names)
            nodes = flow_node_ids(data_of[proc.resource], proc.key)
            if nodes is None:
                continue  # the full validation below says what is wrong with the file
            for task_id in unknown:
                tasks = flow_node_ids(data_of[proc.resource], proc.key, tasks_only=True) or []
                issues.append(tl.issue(["processes", proc.key, "tasks", task_id], (
                    f"unknown task {task_id!r}: {display_of[proc.resource]} has no task or event with that id in "
                    f"process {proc.key!r} (tasks: {', '.join(tasks)})"), key=True))
            if not unknown:
                renamed[proc.resource] = new
        if issues:
            raise PackInvalid(issues)
        files = [(name, renamed.get(name, data)) for name, data in files]

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
            if proc.key in replaced:
                defined = sorted(k for k, v in models.items() if v["file"] == proc.resource)
                issues.append(tl.issue(["processes", proc.key, "bpmn"], (
                    f"{replaced[proc.key]} defines no executable process {proc.key!r} (it defines: "
                    f"{', '.join(defined) or 'none'}); a replaced BPMN keeps the pack's process key")))
                continue
            why = (parsed.non_executable_reasons.get(proc.key) if parsed else None) or \
                f"{display_of.get(proc.resource, proc.resource)} defines no executable process with that id"
            issues.append(src.issue(["processes", seen_keys[proc.key], "key"], f"process {proc.key!r}: {why}"))
    replaced_resources = {p.resource: p.key for p in processes if p.key in replaced}
    for key, model in models.items():
        owner = replaced_resources.get(model["file"])
        if owner is not None and owner in models and key != owner:
            issues.append(tl.issue(["processes", owner, "bpmn"], (
                f"{replaced[owner]} defines process {key!r} besides {owner!r}: a replaced BPMN defines only the "
                "process it replaces")))
    if issues:
        raise PackInvalid(issues)
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

    # forms: the pack's, then the organisation's (same key = replaced, other keys = added)
    forms: dict[str, dict[str, Any]] = {}
    form_origin: dict[str, str] = {}
    if m.get("forms"):
        forms, form_issues = load_forms(pack_dir / m["forms"], _display(pack_dir / m["forms"], pack_dir))
        issues.extend(form_issues)
        form_origin = {k: "pack" for k in forms}
    if tl is not None and tl.data.get("forms"):
        org_forms_dir = tl.file(tl.data["forms"])
        if not org_forms_dir.is_dir():
            issues.append(tl.issue(["forms"], f"forms directory not found: {tl.data['forms']}"))
        else:
            org_forms, form_issues = load_forms(org_forms_dir, tl.shown(org_forms_dir))
            issues.extend(form_issues)
            for k, v in org_forms.items():
                form_origin[k] = "replaced" if k in forms else "added"
                forms[k] = v
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
    raci_src = YamlSource.read(pack_dir / m["raci"], _display(pack_dir / m["raci"], pack_dir)) if m.get("raci") else None
    sod_src = YamlSource.read(pack_dir / m["sod"], _display(pack_dir / m["sod"], pack_dir)) if m.get("sod") else None
    if replaced:  # a replaced BPMN keeps every task id the pack's RACI and SoD name
        for key, shown in replaced.items():
            tasks = human_tasks(models.get(key) or {})
            named: list[tuple[str, str]] = []
            if raci_src is not None and raci_src.ok and isinstance(raci_src.data, dict):
                proc = ((raci_src.data.get("processes") or {}).get(key) or {})
                named += [(t, f"{raci_src.display} (processes.{key}.tasks.{t})") for t in (proc.get("tasks") or {})]
            if sod_src is not None and sod_src.ok and isinstance(sod_src.data, dict):
                for i, rule in enumerate(sod_src.data.get("rules") or []):
                    if isinstance(rule, dict) and rule.get("process") == key:
                        subjects = [s[5:] for s in rule.get("not_same_as") or [] if str(s).startswith("task:")]
                        named += [(t, f"{sod_src.display} (rule {rule.get('id')!r})")
                                  for t in [*(rule.get("tasks") or []), *subjects]]
            for task_id, by in dict.fromkeys(named):
                if task_id not in tasks:
                    issues.append(tl.issue(["processes", key, "bpmn"], (
                        f"{shown} has no user task {task_id!r} in process {key!r}, which {by} names; a replaced "
                        f"BPMN keeps the pack's task ids")))
        if issues:
            raise PackInvalid(issues)
    raci: dict[str, dict[str, RaciEntry]] = {}
    if raci_src is not None:
        raci, raci_issues = parse_raci(raci_src, role_ids, models, bpmn_files, ignore=disabled)
        issues.extend(raci_issues)
    sod: list[SodRule] = []
    if sod_src is not None:
        sod, sod_issues = parse_sod(sod_src, models, bpmn_files, ignore=disabled)
        issues.extend(sod_issues)
    raci_overrides: list[str] = []
    sod_added: list[str] = []
    if tl is not None:
        usable = role_ids | set(extra_roles) | set(role_map.values())
        for key, tasks in tl.raci.items():
            if key not in models:
                why = "it is disabled by this tailoring" if key in disabled else \
                    f"the pack defines {', '.join(sorted(models)) or 'no processes'}"
                issues.append(tl.issue(["raci", key], f"unknown process {key!r}: {why}", key=True))
                continue
            human = human_tasks(models[key])
            for task_id, raw in (tasks or {}).items():
                path = ["raci", key, task_id]
                if task_id not in human:
                    issues.append(tl.issue(path, f"unknown task {task_id!r}: {bpmn_files[key]} has no user task "
                                           f"with that id in process {key!r} (user tasks: "
                                           f"{', '.join(sorted(human)) or 'none'})", key=True))
                    continue
                entry, entry_issues = override_raci(tl.src, path, raw, raci.get(key, {}).get(task_id), usable,
                                                    task_id)
                issues.extend(entry_issues)
                if entry is not None:
                    raci.setdefault(key, {})[task_id] = entry
                    raci_overrides.append(f"{key}.{task_id}")
        if tl.sod:
            added, sod_issues = parse_sod(tl.src, models, bpmn_files, at=["sod"], known_ids={r.id for r in sod})
            issues.extend(sod_issues)
            sod += added
            sod_added = [r.id for r in added]

    # somebody is responsible for every human task, with roles the pack (or the organisation) knows
    lane_roles = role_ids | set(extra_roles)
    for key, model in models.items():
        lanes = lanes_of(key)
        for task_id, info in human_tasks(model).items():
            entry = raci.get(key, {}).get(task_id)
            if entry is not None and entry.responsible:
                continue
            meta = (model.get("user_tasks") or {}).get(task_id, {})
            groups = [g for g in meta.get("candidate_groups") or [] if not _VAR_REF.match(g)]
            for g in groups:
                if g not in lane_roles:
                    issues.append(bpmn_issue(key, task_id, f"task {task_id!r}: candidate group {g!r} is not a "
                                             "role of the pack"))
            if meta.get("candidate_groups") or meta.get("candidate_users") or meta.get("assignee"):
                continue
            lane_id, lane = lanes.get(task_id, (None, None))
            role = next((v.strip() for v in (lane, lane_id) if v and _ROLE_LIKE.match(v.strip())), None)
            if role is None:
                issues.append(bpmn_issue(key, task_id, f"task {task_id!r} of process {key!r}: nobody is responsible "
                                         "(no RACI entry, no camunda:candidateGroups, no lane named by a role id)"))
            elif role not in lane_roles:
                issues.append(bpmn_issue(key, task_id, f"task {task_id!r}: its lane {role!r} is not a role of the "
                                         "pack (lanes are named by role id)"))

    # policies: the pack's values, with the organisation's merged over them
    policies: dict[str, Any] = {}
    policy_schemas: dict[str, tuple[Path | None, str | None]] = {}
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
        policy_schemas[name] = (schema_file, _display(schema_file, pack_dir) if schema_file else None)
    tailored_policies: list[str] = []
    if tl is not None:
        for name, override in tl.policies.items():
            if name not in policy_schemas:
                issues.append(tl.issue(["policies", name], f"unknown policy {name!r}: pack {m['name']!r} has "
                                       f"{', '.join(sorted(policy_schemas)) or 'no policies'}", key=True))
                continue
            if policies.get(name) is None:
                continue  # the pack's own values are invalid (reported above)
            merged = merge_values(policies[name], override)
            schema_file, schema_display = policy_schemas[name]
            schema_value, schema_problems = read_policy_schema(schema_file, schema_display) if schema_file \
                else (None, [])
            if schema_problems:
                continue  # reported with the pack's values
            pol_issues = check_tailored_policy(name, merged, schema_value, tl.src, ["policies", name], schema_display)
            issues.extend(pol_issues)
            if not pol_issues:
                policies[name] = merged
                tailored_policies.append(name)

    # interfaces: the messages one process throws and another catches
    interfaces: list[dict[str, Any]] = []
    for i, itf in enumerate(m.get("interfaces") or []):
        off = [itf[end] for end in ("from", "to") if itf[end] in disabled]
        if off:
            warnings.append(f"interface {itf['message']} from {itf['from']} to {itf['to']}: process "
                            f"{' and '.join(off)} is disabled by the tailoring; the other end's messages find no "
                            "partner")
            continue
        interfaces.append(itf)
        for end in ("from", "to"):
            if itf[end] not in models:
                issues.append(src.issue(["interfaces", i, end], f"unknown process {itf[end]!r}"))
        if itf["from"] in models and itf["message"] not in (models[itf["from"]].get("messages_thrown") or []):
            issues.append(src.issue(["interfaces", i, "message"], f"process {itf['from']!r} throws no message "
                                    f"{itf['message']!r}"))
        if itf["to"] in models and itf["message"] not in (models[itf["to"]].get("messages_caught") or []):
            issues.append(src.issue(["interfaces", i, "message"], f"process {itf['to']!r} catches no message "
                                    f"{itf['message']!r}"))

    for i, exp in enumerate(m.get("expects") or []):
        for j, key in enumerate(exp["from"]):
            if key in disabled:
                continue
            if key not in models:
                issues.append(src.issue(["expects", i, "from", j], f"unknown process {key!r}"))
            elif exp["message"] not in (models[key].get("messages_thrown") or []):
                issues.append(src.issue(["expects", i, "from", j], f"process {key!r} throws no message "
                                        f"{exp['message']!r}"))

    if issues:
        raise PackInvalid(issues)

    # the organisation's role names everywhere a role is named (the pack's keys stay)
    version_roles = sorted({role_map.get(r, r) for r in role_ids} | set(extra_roles))
    rules: dict[str, Rules] = {}
    for key, model in models.items():
        rules[key] = Rules(
            pack_name=m["name"], pack_version=str(m["version"]), roles=version_roles,
            raci={t: map_roles(e, role_map) for t, e in raci.get(key, {}).items()},
            sod=[r for r in sod if r.process == key],
            forms={fk: forms[fk] for fk in sorted(set(form_refs.get(key, []))) if fk in forms},
            start_form=model.get("start_form_key"), policies=policies, role_map=dict(role_map),
        )
    summary = None
    if tl is not None:
        summary = {
            "file": tl.display,
            "sha256": hashlib.sha256(tl.path.read_bytes()).hexdigest(),
            "basedOn": tl.data.get("based_on"),
            "roles": dict(sorted(role_map.items())),
            "extraRoles": sorted(extra_roles),
            "policies": sorted(tailored_policies),
            "processesRenamed": {k: v["title"] for k, v in sorted(tl_processes.items()) if v.get("title")},
            "tasksRenamed": {f"{k}.{t}": n for k, v in sorted(tl_processes.items())
                             for t, n in sorted((v.get("tasks") or {}).items())},
            "processesDisabled": sorted(disabled),
            "processesReplaced": dict(sorted(replaced.items())),
            "raci": sorted(raci_overrides),
            "sod": sod_added,
            "formsAdded": sorted(k for k, o in form_origin.items() if o == "added"),
            "formsReplaced": sorted(k for k, o in form_origin.items() if o == "replaced"),
        }
    return Pack(
        name=m["name"], version=str(m["version"]), title=m.get("title"), standard=m.get("standard"),
        directory=pack_dir, roles=roles, processes=processes, files=files, parsed=parsed, rules=rules,
        interfaces=interfaces,
        warnings=list(getattr(parsed, "warnings", []) or []),
        forms=forms,
        tailoring=summary, role_map=role_map, extra_roles=extra_roles, disabled=sorted(disabled),
        raci=raci, sod=sod, policies=policies, form_origin=form_origin, bpmn_files=bpmn_files,
        notes=warnings,
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

    def load(self, pack_dir: Path, org_dir: Path | None = None) -> Pack:
        """The pack, checked, and tailored for the organisation in ``org_dir`` (when it has a tailoring)."""
        return load_pack(Path(pack_dir), schema_path=self.schema_path, repository=self._repository,
                         org_dir=Path(org_dir) if org_dir is not None else None)

    def apply(self, pack_dir: Path, org_dir: Path | None = None, *, principal: Principal | None = None,
              actor: str | None = None) -> PackApplyResult:
        """Deploy a pack for an organisation (admins only when a principal is given)."""
        if principal is not None and not principal.is_admin:
            raise Forbidden("only users with the admin role may apply process packs")
        actor = actor or (principal.user_id if principal else "system")
        org = Organisation.load(org_dir)
        pack = self.load(pack_dir, org.directory)
        if not pack.files:
            return PackApplyResult(pack.name, pack.version, org.name, [], created=False,
                                   warnings=[*pack.notes, "the pack has no processes"], tailoring=pack.tailoring)
        before = {d.key: d.version for d in self._repository.definitions(latest_only=True) if d.key in pack.rules}

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
        warnings = pack.notes + self._warnings(pack, org)
        for w in warnings:
            log.warning("pack %s: %s", pack.name, w)
        new_versions = sorted(d.key for d in definitions if before.get(d.key) != d.version)
        return PackApplyResult(pack.name, pack.version, org.name, definitions, created, warnings, new_versions,
                               pack.tailoring)

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
        for pack_role, org_role in sorted(pack.role_map.items()):
            if pack_role == org_role or pack_role in pack.role_map.values():
                continue
            holders = sorted(u.id for u in directory.users_with_role(pack_role))
            if holders:
                out.append(f"{', '.join(holders)} hold{'s' if len(holders) == 1 else ''} pack role {pack_role!r}, "
                           f"which the tailoring maps to {org_role!r}: they get no {pack_role!r} tasks under that "
                           "name")
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
                try:
                    tailoring = json.loads(r.manifest_json).get("tailoring")
                except (TypeError, ValueError):
                    tailoring = None
                out.append(PackView(r.id, r.name, r.version, r.organisation, r.title, r.created_at, r.applied_by,
                                    [{"key": k, "version": v, "id": i} for k, v, i in defs], tailoring))
            return out

    def rules(self, definition_id: str) -> Rules | None:
        return self._rules.get(definition_id)
