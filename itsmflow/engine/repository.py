"""Repository service: deploy BPMN/DMN files, version process definitions, read them back.

- One version line per process key. Deploying a file whose bytes (content hash) equal those of
  the latest version of every process it defines changes nothing and returns those versions;
  changed content creates version N+1. Running instances keep the version they started on.
- The uploaded bytes are kept unchanged (``deployment_resource``) and served back as-is.
- The parsed spec is serialized once per version and cached in memory (:class:`SpecCache`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from . import snapshot
from .bpmn.parsing import parse_deployment
from .errors import Conflict, DeploymentInvalid, Forbidden, InvalidRequest, NotFound, SourceIssue
from .identity import Principal
from .textcheck import check_text, valid_id
from .clock import utcnow
from .history import REPOSITORY_SCOPE, AuditWriter
from .storage.models import Deployment, DeploymentResource, ProcessDefinition


@dataclass(frozen=True)
class DefinitionInfo:
    id: str
    key: str
    version: int
    name: str | None
    deployment_id: str
    resource_name: str
    created_at: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "version": self.version,
            "name": self.name,
            "deploymentId": self.deployment_id,
            "resource": self.resource_name,
        }


@dataclass
class DeploymentResult:
    id: str
    name: str
    definitions: list[DefinitionInfo]
    created: bool  # False when every file was already deployed with identical content
    non_executable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "definitions": [
                {"id": d.id, "key": d.key, "version": d.version, "name": d.name} for d in self.definitions
            ],
        }


@dataclass
class CachedDefinition:
    """What an instance needs of its definition: shared, read-only spec objects and metadata."""

    id: str
    key: str
    version: int
    name: str | None
    spec: Any
    subprocess_specs: dict[str, Any]
    model: dict[str, Any]

    def user_task(self, bpmn_id: str) -> dict[str, Any]:
        return self.model.get("user_tasks", {}).get(bpmn_id, {})

    def activity(self, bpmn_id: str) -> dict[str, Any]:
        return self.model.get("activities", {}).get(bpmn_id, {})


class SpecCache:
    """Definitions are immutable, so their parsed specs are cached forever (per process)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._items: dict[str, CachedDefinition] = {}
        self._lock = threading.Lock()

    def get(self, definition_id: str, session: Session | None = None) -> CachedDefinition:
        item = self._items.get(definition_id)
        if item is not None:
            return item
        if session is None:
            with self._sessions() as own:
                row = own.get(ProcessDefinition, definition_id)
        else:
            row = session.get(ProcessDefinition, definition_id)
        if row is None:
            raise NotFound(f"process definition {definition_id} does not exist")
        spec, subs = snapshot.load_spec(row.spec_json)
        item = CachedDefinition(row.id, row.key, row.version, row.name, spec, subs, json.loads(row.model_json))
        with self._lock:
            self._items.setdefault(definition_id, item)
        return self._items[definition_id]


DefinitionHook = Callable[[Session, ProcessDefinition, dict[str, Any]], None]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _info(row: ProcessDefinition) -> DefinitionInfo:
    return DefinitionInfo(row.id, row.key, row.version, row.name, row.deployment_id, row.resource_name, row.created_at)


class RepositoryService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        cache: SpecCache,
        *,
        max_bytes: int,
        script_validator: Callable[[str], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._cache = cache
        self._max_bytes = max_bytes
        self._script_validator = script_validator
        # called in the deploy transaction for each new definition version (start events, timers)
        self.on_definition_created: list[DefinitionHook] = []

    # -- validation -------------------------------------------------------------------------
    def validate(self, files: list[tuple[str, bytes]]):  # noqa: ANN201
        """Parse and check files without storing anything; raises :class:`DeploymentInvalid`."""
        if not files:
            raise DeploymentInvalid([SourceIssue("<request>", None, None, "no files given")])
        issues = []
        for fname, _ in files:
            try:
                check_text(fname, "file name", 512, required=True)
            except InvalidRequest as exc:
                issues.append(SourceIssue(fname[:80] if isinstance(fname, str) else "<file>", None, None, exc.detail))
        if issues:
            raise DeploymentInvalid(issues)
        names = [n for n, _ in files]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DeploymentInvalid([SourceIssue(n, None, None, "file given twice in one deployment") for n in dupes])
        return parse_deployment(files, max_bytes=self._max_bytes, script_validator=self._script_validator)

    # -- deploy -----------------------------------------------------------------------------
    def deploy(
        self, name: str, files: list[tuple[str, bytes]], *, principal: Principal | None = None,
        actor: str | None = None, source: str = "api", identity: dict[str, str] | None = None,
        hooks: list[DefinitionHook] | None = None, parsed: Any = None,
    ) -> DeploymentResult:
        """Deploy files (admins only when a principal is given; the CLI deploys as the system).

        ``identity`` (process key → text) adds to the content identity of a process: the pack loader
        passes the hash of the rules deployed with it, so changed rules make a new version even when
        the BPMN bytes are the same. ``hooks`` run, in the deploy transaction, for each new definition
        of this deployment only (after the service-wide ``on_definition_created`` hooks). ``parsed``
        is the result of :meth:`validate` when the caller already has it.
        """
        if principal is not None and not principal.is_admin:
            raise Forbidden("only users with the admin role may deploy")
        actor = actor or (principal.user_id if principal else None)
        check_text(name, "name", 255, required=True)
        parsed = parsed if parsed is not None else self.validate(files)
        too_long = [SourceIssue(m.file, None, None, f"process id {key[:40]!r}… is longer than 200 characters")
                    for key, m in parsed.processes.items() if len(key) > 200]
        if too_long:
            raise DeploymentInvalid(too_long)
        file_hash = {fname: _sha256(data) for fname, data in files}
        key_hash = {
            key: file_hash[m.file] if not (identity or {}).get(key)
            else _sha256(f"{file_hash[m.file]}:{identity[key]}".encode())
            for key, m in parsed.processes.items()
        }
        try:
            return self._store(name, files, file_hash, key_hash, parsed, actor, source, hooks or [])
        except IntegrityError:
            # a concurrent deployment created the same version first: re-read, it is now identical or newer
            try:
                return self._store(name, files, file_hash, key_hash, parsed, actor, source, hooks or [])
            except IntegrityError as exc:
                raise Conflict("another deployment of the same process keys is in progress; retry") from exc

    def _store(self, name, files, file_hash, key_hash, parsed, actor, source, hooks) -> DeploymentResult:  # noqa: ANN001
        now = utcnow()
        with self._sessions() as session, session.begin():
            existing: list[DefinitionInfo] = []
            to_create = []
            for key, model in parsed.processes.items():
                chash = key_hash[key]
                latest = session.scalars(
                    select(ProcessDefinition)
                    .where(ProcessDefinition.key == key)
                    .order_by(ProcessDefinition.version.desc())
                    .limit(1)
                ).first()
                if latest is not None and latest.content_hash == chash:
                    existing.append(_info(latest))
                else:
                    to_create.append((key, model, chash, (latest.version if latest else 0) + 1))

            if not to_create:
                dep_id = existing[0].deployment_id if existing else ""
                return DeploymentResult(dep_id, name, existing, created=False, non_executable=parsed.non_executable)

            deployment = Deployment(id=str(uuid.uuid4()), name=name, source=source, deployed_by=actor, created_at=now)
            session.add(deployment)
            resources: dict[str, DeploymentResource] = {}
            for fname, data in files:
                res = DeploymentResource(
                    id=str(uuid.uuid4()), deployment_id=deployment.id, name=fname, sha256=file_hash[fname], content=data
                )
                resources[fname] = res
                session.add(res)
            session.flush()

            created: list[DefinitionInfo] = []
            audit = AuditWriter.for_scope(session, REPOSITORY_SCOPE)
            for key, model, chash, version in to_create:
                spec, subs = parsed.specs[key], parsed.subprocess_specs.get(key, {})
                row = ProcessDefinition(
                    id=f"{key}:{version}:{uuid.uuid4().hex[:12]}",
                    key=key,
                    version=version,
                    name=model.name,
                    deployment_id=deployment.id,
                    resource_id=resources[model.file].id,
                    resource_name=model.file,
                    content_hash=chash,
                    spec_json=snapshot.dump_spec(spec, subs),
                    model_json=json.dumps(model.as_dict()),
                    created_at=now,
                )
                session.add(row)
                session.flush()
                for hook in [*self.on_definition_created, *hooks]:
                    hook(session, row, model.as_dict())
                created.append(_info(row))
                audit.append(
                    "definition_deployed",
                    actor=actor,
                    data={"definitionId": row.id, "key": key, "version": version, "deploymentId": deployment.id,
                          "resource": model.file, "sha256": chash},
                    at=now,
                )
            audit.write(session)
            session.flush()
            return DeploymentResult(
                deployment.id, name, created + existing, created=True, non_executable=parsed.non_executable
            )

    # -- queries ----------------------------------------------------------------------------
    def definitions(self, key: str | None = None, latest_only: bool = False) -> list[DefinitionInfo]:
        with self._sessions() as session:
            q = select(ProcessDefinition)
            if key is not None and not valid_id(key):
                return []
            if key:
                q = q.where(ProcessDefinition.key == key)
            if latest_only:
                sub = (
                    select(ProcessDefinition.key, func.max(ProcessDefinition.version).label("v"))
                    .group_by(ProcessDefinition.key)
                    .subquery()
                )
                q = q.join(sub, (sub.c.key == ProcessDefinition.key) & (sub.c.v == ProcessDefinition.version))
            rows = session.scalars(q.order_by(ProcessDefinition.key, ProcessDefinition.version)).all()
            return [_info(r) for r in rows]

    def latest(self, key: str, session: Session | None = None) -> DefinitionInfo:
        def _q(s: Session) -> ProcessDefinition | None:
            return s.scalars(
                select(ProcessDefinition)
                .where(ProcessDefinition.key == key)
                .order_by(ProcessDefinition.version.desc())
                .limit(1)
            ).first()

        if not valid_id(key):
            raise NotFound(f"no process definition with key {key!r} is deployed")
        if session is not None:
            row = _q(session)
        else:
            with self._sessions() as own:
                row = _q(own)
        if row is None:
            raise NotFound(f"no process definition with key {key!r} is deployed")
        return _info(row)

    def get(self, definition_id: str) -> DefinitionInfo:
        with self._sessions() as session:
            row = session.get(ProcessDefinition, definition_id) if valid_id(definition_id) else None
            if row is None:
                raise NotFound(f"process definition {definition_id!r} does not exist")
            return _info(row)

    def xml(self, definition_id: str) -> bytes:
        """The uploaded file that defines this version, byte-for-byte."""
        with self._sessions() as session:
            row = session.get(ProcessDefinition, definition_id) if valid_id(definition_id) else None
            if row is None:
                raise NotFound(f"process definition {definition_id!r} does not exist")
            return session.get(DeploymentResource, row.resource_id).content

    def model(self, definition_id: str) -> dict[str, Any]:
        return self._cache.get(definition_id).model

    def cached(self, definition_id: str) -> CachedDefinition:
        return self._cache.get(definition_id)
