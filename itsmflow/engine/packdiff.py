"""``itsmflow pack diff``: what a tailoring changes against its pack, and what changes between two pack
versions (each optionally tailored), as readable text (see docs/tailoring.md).

Both sides are loaded and fully checked (:func:`itsmflow.engine.packs.load_pack`), described in pack
terms (role ids before the organisation's mapping, process keys, task ids, policy paths) and compared
section by section: pack, roles, processes (renames, disabled, replaced or changed BPMN with a unified
diff of its flow nodes), policies key by key, RACI field by field, segregation of duties, forms (with a
unified diff of the JSON Schema) and interfaces.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any

from .bpmn.metadata import lane_map
from .bpmn.xml import parse_document

ADDED, REMOVED, CHANGED = "+", "-", "~"


def _v(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, 2]}}`` → ``{"a.b[0]": 1, "a.b[1]": 2}`` (empty containers are kept as values)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict) and value:
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def describe(pack: Any) -> dict[str, Any]:
    """A loaded pack (:class:`itsmflow.engine.packs.Pack`) in comparable pack terms."""
    data_of = dict(pack.files)
    processes: dict[str, Any] = {}
    for proc in pack.processes:
        model = pack.parsed.processes[proc.key].as_dict() if pack.parsed is not None else {}
        doc, _ = parse_document(proc.resource, data_of[proc.resource])
        process_el = doc.by_id(proc.key) if doc is not None else None
        lanes = lane_map(process_el)[0] if process_el is not None else {}
        nodes = []
        for node_id, info in (model.get("activities") or {}).items():
            lane = (lanes.get(node_id) or (None, None))[1]
            nodes.append({"id": node_id, "type": info.get("type"), "name": info.get("name"), "lane": lane})
        processes[proc.key] = {
            "title": model.get("name") or proc.title,
            "file": pack.bpmn_files.get(proc.key, proc.bpmn),
            "sha256": hashlib.sha256(data_of[proc.resource]).hexdigest(),
            "nodes": nodes,
        }
    return {
        "name": pack.name,
        "version": pack.version,
        "roles": dict(pack.roles),
        "role_map": dict(pack.role_map),
        "extra_roles": dict(pack.extra_roles),
        "processes": processes,
        "disabled": list(pack.disabled),
        "policies": dict(pack.policies),
        "raci": {f"{k}.{t}": e.as_dict() for k, entries in sorted(pack.raci.items()) for t, e in sorted(entries.items())},
        "sod": {r.id: r.as_dict() for r in pack.sod},
        "forms": {k: {"schema": v.get("schema"), "uiSchema": v.get("uiSchema"),
                      "origin": pack.form_origin.get(k, "pack")} for k, v in sorted(pack.forms.items())},
        "interfaces": sorted(f"{i['message']}: {i['from']} -> {i['to']}" for i in pack.interfaces),
        "tailoring": pack.tailoring,
    }


def _node_line(n: dict[str, Any], with_name: bool = True) -> str:
    name = f' "{n["name"]}"' if with_name and n.get("name") else ""
    lane = f" [lane {n['lane']}]" if n.get("lane") else ""
    return f"{n['type']} {n['id']}{name}{lane}"


def _keyed(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    return ([k for k in new if k not in old], [k for k in old if k not in new],
            [k for k in new if k in old and old[k] != new[k]])


def _raci_text(entry: dict[str, Any]) -> str:
    parts = []
    for field in ("responsible", "accountable", "consulted", "informed"):
        value = entry.get(field)
        if value:
            parts.append(f"{field} {', '.join(value) if isinstance(value, list) else value}")
    if entry.get("consulted"):
        parts.append(f"consultation {entry.get('consultation')}")
    if entry.get("signoff"):
        parts.append("signoff")
    return "; ".join(parts) or "(empty)"


def diff(old: dict[str, Any], new: dict[str, Any], *, old_label: str, new_label: str, old_tag: str = "old",
         new_tag: str = "new") -> str:
    """Readable text of what changes from ``old`` to ``new`` (two :func:`describe` results); ``old_tag`` and
    ``new_tag`` mark the two sides in the unified diffs."""
    sections: list[tuple[str, list[str]]] = []

    # pack
    lines = []
    for field in ("name", "version"):
        if old[field] != new[field]:
            lines.append(f"  {CHANGED} {field}: {old[field]} -> {new[field]}")
    sections.append(("Pack", lines))

    # roles: the pack's, the organisation's names for them, the organisation's own
    lines = []
    added, removed, changed = _keyed(old["roles"], new["roles"])
    lines += [f"  {ADDED} pack role {r}: {new['roles'][r] or ''}".rstrip() for r in added]
    lines += [f"  {REMOVED} pack role {r}" for r in removed]
    lines += [f"  {CHANGED} pack role {r}: description changed" for r in changed]
    for role in sorted(set(old["role_map"]) | set(new["role_map"])):
        a, b = old["role_map"].get(role), new["role_map"].get(role)
        if a == b:
            continue
        if a is None:
            lines.append(f"  {ADDED} {role} -> {b}   (organisation's role name)")
        elif b is None:
            lines.append(f"  {REMOVED} {role} -> {a}   (the pack's role id is used again)")
        else:
            lines.append(f"  {CHANGED} {role} -> {a}  becomes  {role} -> {b}")
    added, removed, changed = _keyed(old["extra_roles"], new["extra_roles"])
    lines += [f"  {ADDED} organisation role {r}: {new['extra_roles'][r] or ''}".rstrip() for r in added]
    lines += [f"  {REMOVED} organisation role {r}" for r in removed]
    lines += [f"  {CHANGED} organisation role {r}: description changed" for r in changed]
    sections.append(("Roles (pack role -> organisation's role)", lines))

    # processes
    lines = []
    for key in sorted(set(old["processes"]) | set(new["processes"]) | set(new["disabled"]) | set(old["disabled"])):
        a, b = old["processes"].get(key), new["processes"].get(key)
        if a is None and b is None:
            continue
        if b is None:
            why = "disabled by the tailoring" if key in new["disabled"] else "no longer in the pack"
            lines.append(f"  {REMOVED} {key} \"{a['title']}\": {why} (not deployed)")
            continue
        if a is None:
            why = "enabled again" if key in old["disabled"] else "new process"
            lines.append(f"  {ADDED} {key} \"{b['title']}\": {why} ({b['file']})")
            continue
        if a["title"] != b["title"]:
            lines.append(f"  {CHANGED} {key}: renamed \"{a['title']}\" -> \"{b['title']}\" (key stays {key})")
        if a["file"] != b["file"]:
            lines.append(f"  {CHANGED} {key}: BPMN replaced: {a['file']} -> {b['file']}")
        old_nodes = {n["id"]: n for n in a["nodes"]}
        for n in b["nodes"]:
            before = old_nodes.get(n["id"])
            if before is not None and before.get("name") != n.get("name"):
                lines.append(f"  {CHANGED} {key}.{n['id']}: renamed \"{before.get('name')}\" -> \"{n.get('name')}\"")
        old_lines = [_node_line(n, False) for n in a["nodes"]]
        new_lines = [_node_line(n, False) for n in b["nodes"]]
        if old_lines != new_lines:
            lines.append(f"  {CHANGED} {key}: flow nodes (type id [lane]):")
            lines += ["      " + d.rstrip("\n") for d in difflib.unified_diff(
                [_node_line(n) for n in a["nodes"]], [_node_line(n) for n in b["nodes"]],
                fromfile=f"{a['file']} ({old_tag})", tofile=f"{b['file']} ({new_tag})", lineterm="", n=1)]
        elif a["sha256"] != b["sha256"] and not any(
                old_nodes.get(n["id"], {}).get("name") != n.get("name") for n in b["nodes"]) and a["title"] == b["title"]:
            lines.append(f"  {CHANGED} {key}: BPMN content changed (same flow nodes; sha256 {a['sha256'][:12]}… -> "
                         f"{b['sha256'][:12]}…)")
    sections.append(("Processes", lines))

    # policies, key by key
    lines = []
    for name in sorted(set(old["policies"]) | set(new["policies"])):
        a, b = flatten(old["policies"].get(name)), flatten(new["policies"].get(name))
        if name not in new["policies"]:
            lines.append(f"  {REMOVED} policy {name}")
            continue
        if name not in old["policies"]:
            lines.append(f"  {ADDED} policy {name}")
        for path in [p for p in b if p not in a] + [p for p in a if p not in b] + [p for p in b if p in a]:
            label = f"{name}.{path}" if path else name
            if path not in a:
                lines.append(f"  {ADDED} {label}: {_v(b[path])}")
            elif path not in b:
                lines.append(f"  {REMOVED} {label}: {_v(a[path])}")
            elif a[path] != b[path]:
                lines.append(f"  {CHANGED} {label}: {_v(a[path])} -> {_v(b[path])}")
    sections.append(("Policies", lines))

    # RACI, field by field (pack role ids; the organisation's names are under Roles)
    lines = []
    added, removed, changed = _keyed(old["raci"], new["raci"])
    lines += [f"  {ADDED} {t}: {_raci_text(new['raci'][t])}" for t in added]
    lines += [f"  {REMOVED} {t}: {_raci_text(old['raci'][t])}" for t in removed]
    for t in changed:
        for field in ("responsible", "accountable", "consulted", "informed", "consultation", "signoff"):
            a, b = old["raci"][t].get(field), new["raci"][t].get(field)
            if a != b:
                lines.append(f"  {CHANGED} {t}.{field}: {_v(a)} -> {_v(b)}")
    sections.append(("RACI", lines))

    # segregation of duties
    lines = []
    added, removed, changed = _keyed(old["sod"], new["sod"])
    for rid in added:
        r = new["sod"][rid]
        lines.append(f"  {ADDED} rule {rid} ({r['process']}: {', '.join(r['tasks'])} not by "
                     f"{', '.join(r['not_same_as'])}): {r['description']}")
    lines += [f"  {REMOVED} rule {rid}" for rid in removed]
    for rid in changed:
        for field in ("description", "process", "tasks", "not_same_as"):
            if old["sod"][rid].get(field) != new["sod"][rid].get(field):
                lines.append(f"  {CHANGED} rule {rid}.{field}: {_v(old['sod'][rid].get(field))} -> "
                             f"{_v(new['sod'][rid].get(field))}")
    sections.append(("Segregation of duties", lines))

    # forms
    lines = []
    added, removed, changed = _keyed(old["forms"], new["forms"])
    lines += [f"  {ADDED} form {k}" + (" (added by the organisation)" if new["forms"][k]["origin"] == "added" else "")
              for k in added]
    lines += [f"  {REMOVED} form {k}" for k in removed]
    for k in changed:
        a, b = old["forms"][k], new["forms"][k]
        origin = " (replaced by the organisation)" if b["origin"] == "replaced" and a["origin"] != "replaced" else ""
        lines.append(f"  {CHANGED} form {k}{origin}:")
        for part in ("schema", "uiSchema"):
            if a[part] != b[part]:
                lines += ["      " + d for d in difflib.unified_diff(
                    json.dumps(a[part], indent=2, sort_keys=True).splitlines(),
                    json.dumps(b[part], indent=2, sort_keys=True).splitlines(),
                    fromfile=f"{k} {part} ({old_tag})", tofile=f"{k} {part} ({new_tag})", lineterm="", n=1)]
    sections.append(("Forms", lines))

    # interfaces
    lines = [f"  {ADDED} {i}" for i in new["interfaces"] if i not in old["interfaces"]]
    lines += [f"  {REMOVED} {i}" for i in old["interfaces"] if i not in new["interfaces"]]
    sections.append(("Interfaces", lines))

    out = [f"--- {old_label}", f"+++ {new_label}"]
    shown = [(title, lines) for title, lines in sections if lines]
    if not shown:
        out.append("no differences")
    for title, lines in shown:
        out.append("")
        out.append(title)
        out += lines
    return "\n".join(out) + "\n"
