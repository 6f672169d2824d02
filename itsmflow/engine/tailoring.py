"""An organisation's tailoring of a process pack (``ORG_DIR/tailoring.yaml``, see docs/tailoring.md).

The overlay is data like the pack: validated against ``process_packs/tailoring.schema.json`` here, and
merged into the pack by :func:`itsmflow.engine.packs.load_pack`, which checks every reference (roles,
processes, tasks, policies, forms) against the pack and reports problems as ``file:line:column``
located in ``tailoring.yaml`` (or in the organisation's replaced BPMN and forms).

What it can change — the pack's keys never change (process keys, task ids, policy names, form keys,
role ids inside the pack's files), so the pack stays upgradeable under a tailoring:

- ``roles``: pack role id → the organisation's role name (lanes, RACI, candidate roles, consultations,
  sign-off, notifications follow it); ``extra_roles``: roles the pack does not have;
- ``policies``: values merged over the pack's and validated against the policy's schema;
- ``processes.<key>``: ``title`` (display name), ``tasks`` (task display names), ``bpmn`` (a replaced
  BPMN file: same process key, keeps every task id the pack's RACI/SoD name), ``disabled``;
- ``raci``: RACI fields per task that replace the pack's (also for tasks a replaced BPMN adds);
- ``sod``: additional segregation-of-duties rules; ``forms``: a directory of replaced or added forms.

Renaming is done on the BPMN bytes (the ``name`` attribute of the process and of the renamed elements
only; everything else is kept byte for byte), so a renamed task is a new definition version whose XML
shows the organisation's names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bpmn.xml import parse_document
from .errors import SourceIssue
from .yamlsrc import YamlSource, schema_issues

TAILORING_FILE = "tailoring.yaml"
TAILORING_SCHEMA = "tailoring.schema.json"  # beside pack.schema.json

_FLOW_NODE = re.compile(r"(Task|Event|Gateway)$|^(task|subProcess|callActivity|transaction)$")
_NAME_ATTR = re.compile(r"(\sname\s*=\s*)(\"[^\"]*\"|'[^']*')")


def display_path(path: Path, base: Path) -> str:
    """``path`` for messages: relative to ``base`` (the pack directory), as the pack's own files are."""
    try:
        return Path(os.path.normpath(os.path.relpath(path, base))).as_posix()
    except ValueError:  # pragma: no cover - other drive on Windows
        return str(path)


@dataclass
class Tailoring:
    """A read and schema-checked ``tailoring.yaml`` (its references are checked against the pack by
    :func:`itsmflow.engine.packs.load_pack`)."""

    org_dir: Path
    path: Path
    display: str  # for messages, e.g. orgs/northwind/tailoring.yaml
    src: YamlSource
    pack_dir: Path

    @property
    def data(self) -> dict[str, Any]:
        return self.src.data if isinstance(self.src.data, dict) else {}

    @property
    def role_map(self) -> dict[str, str]:
        return dict(self.data.get("roles") or {})

    @property
    def extra_roles(self) -> dict[str, str | None]:
        return dict(self.data.get("extra_roles") or {})

    @property
    def policies(self) -> dict[str, Any]:
        return dict(self.data.get("policies") or {})

    @property
    def processes(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v or {}) for k, v in (self.data.get("processes") or {}).items()}

    @property
    def disabled(self) -> set[str]:
        return {k for k, v in self.processes.items() if v.get("disabled")}

    @property
    def raci(self) -> dict[str, dict[str, dict[str, Any]]]:
        return dict(self.data.get("raci") or {})

    @property
    def sod(self) -> list[dict[str, Any]]:
        return list(self.data.get("sod") or [])

    def file(self, rel: str) -> Path:
        """A path of the tailoring (relative to the organisation directory)."""
        return (self.org_dir / rel).resolve()

    def shown(self, path: Path) -> str:
        return display_path(path, self.pack_dir)

    def issue(self, path: list[Any], message: str, *, key: bool = False) -> SourceIssue:
        return self.src.issue(path, message, key=key)


def read_tailoring(org_dir: Path, pack_dir: Path, schema_path: Path) -> tuple[Tailoring | None, list[SourceIssue]]:
    """``org_dir/tailoring.yaml`` checked against its schema; ``(None, [])`` when the organisation has none."""
    path = Path(org_dir) / TAILORING_FILE
    if not path.is_file():
        return None, []
    display = display_path(path, pack_dir)
    src = YamlSource.read(path, display)
    if not src.ok:
        return None, list(src.issues)
    if src.data is None:  # an empty file: nothing is tailored (yet)
        src.data = {}
    try:
        schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return None, [SourceIssue(str(schema_path), None, None, f"cannot read the tailoring schema: {exc}")]
    if not isinstance(src.data, dict):
        return None, [src.issue([], "a tailoring must be a mapping (see docs/tailoring.md)")]
    issues = schema_issues(src, schema)
    if issues:
        return None, issues
    return Tailoring(Path(org_dir), path, display, src, Path(pack_dir)), []


# -- renaming inside BPMN bytes ----------------------------------------------------------------------
def _escape(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;"))


def _tag_end(text: str, start: int) -> int:
    """Index just after the ``>`` that closes the start tag beginning at ``start`` (quotes respected)."""
    quote = None
    for i in range(start + 1, len(text)):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == ">":
            return i + 1
    return -1


def flow_node_ids(data: bytes, key: str, *, tasks_only: bool = False) -> list[str] | None:
    """Ids of the flow nodes (tasks, events, gateways, sub-processes; only tasks with ``tasks_only``) of
    process ``key``; None when the file cannot be read or has no such process (validation reports that)."""
    doc, _ = parse_document("bpmn", data)
    process = doc.by_id(key) if doc is not None else None
    if process is None:
        return None
    from lxml import etree

    kind = re.compile(r"Task$|^task$") if tasks_only else _FLOW_NODE
    return [el.get("id") for el in process.iter() if isinstance(el.tag, str) and el.get("id")
            and kind.search(etree.QName(el).localname)]


def rename(data: bytes, key: str, title: str | None, names: dict[str, str]) -> tuple[bytes, list[str]]:
    """Set the ``name`` of process ``key`` (``title``) and of its flow nodes (``names``: id → name),
    changing nothing else in the file. Returns the new bytes and the ids of ``names`` that are not flow
    nodes of the process (nothing is renamed then)."""
    doc, _ = parse_document("bpmn", data)
    process = doc.by_id(key) if doc is not None else None
    if process is None:
        return data, sorted(names)
    nodes = set(flow_node_ids(data, key) or [])
    unknown = [i for i in names if i not in nodes]
    if unknown:
        return data, unknown
    text = data.decode(doc.codec)
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    edits: list[tuple[int, int, str]] = []
    wanted = ([(process, title)] if title is not None else []) + [(doc.by_id(i), n) for i, n in names.items()]
    for el, new_name in wanted:
        line, col = doc.locate(el)
        if line is None:
            return data, [el.get("id")]
        start = starts[line - 1] + (col or 1) - 1
        end = _tag_end(text, start) if text.startswith("<", start) else -1
        if end < 0:
            return data, [el.get("id")]
        tag = text[start:end]
        value = f'"{_escape(new_name)}"'
        if _NAME_ATTR.search(tag):
            new_tag = _NAME_ATTR.sub(lambda m: m.group(1) + value, tag, count=1)
        else:
            m = re.match(r"<[^\s/>]+", tag)
            new_tag = tag[: m.end()] + f" name={value}" + tag[m.end():]
        edits.append((start, end, new_tag))
    for start, end, new_tag in sorted(edits, reverse=True):
        text = text[:start] + new_tag + text[end:]
    return text.encode(doc.codec), []
