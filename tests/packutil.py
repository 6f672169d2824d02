"""Helpers for the pack tests (RACI, SoD, forms, notifications) driving the mini pack over HTTP."""

from __future__ import annotations

from typing import Any

PROBLEM = "application/problem+json"
RFC = {"summary": "Upgrade the database", "risk": "low"}


def H(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer t-{user}"}


def problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    return resp.json()


def start(client, user: str = "ivan", variables: dict[str, Any] | None = None, **body) -> dict:
    resp = client.post("/api/process-definitions/key/mini_change/start", headers=H(user),
                       json={"variables": RFC if variables is None else variables, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()


def open_tasks(client, instance_id: str) -> list[dict]:
    resp = client.get("/api/tasks", headers=H("root"), params={"processInstanceId": instance_id})
    assert resp.status_code == 200, resp.text
    return resp.json()


def task(client, instance_id: str, key: str) -> dict:
    found = [t for t in open_tasks(client, instance_id) if t["taskDefinitionKey"] == key]
    assert len(found) == 1, (key, open_tasks(client, instance_id))
    return found[0]


def complete(client, task_id: str, user: str, variables: dict[str, Any] | None = None):
    return client.post(f"/api/tasks/{task_id}/complete", headers=H(user), json={"variables": variables or {}})


def consult(client, task_id: str, user: str, opinion: str = "fine by me", **extra):
    return client.post(f"/api/tasks/{task_id}/consultations", headers=H(user), json={"opinion": opinion, **extra})


def ok(resp, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


def drive_to(client, target: str, *, initiator: str = "ivan", builder: str = "bob") -> str:
    """Start a mini change and complete tasks until ``target`` is open; returns the instance id."""
    iid = start(client, initiator)["id"]
    order = ["classify", "authorise", "build", "test"]
    for key in order[: order.index(target)]:
        t = task(client, iid, key)
        if key == "classify":
            ok(consult(client, t["id"], "cora"), 201)
            ok(complete(client, t["id"], "mike", {"category": "standard"}))
        elif key == "authorise":
            ok(complete(client, t["id"], "alma", {"decision": "approved"}))
        elif key == "build":
            ok(complete(client, t["id"], builder, {"buildNotes": "built"}))
    return iid


# -- a generic walker: drive any pack process through its human tasks, checking every inbox ----------
_HOURS = __import__("itertools").cycle(range(6, 23))


def sample(schema: dict[str, Any], rng: Any = None) -> Any:
    """A value satisfying a (simple) JSON Schema. Without ``rng`` approvals approve and outcomes succeed;
    with a ``random.Random`` enum values are picked at random (to reach other branches)."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        if rng is not None:
            return rng.choice(schema["enum"])
        good = [v for v in schema["enum"] if v not in ("rejected", "unsuccessful", "failed", "no", False)]
        return (good or schema["enum"])[0]
    if "default" in schema:
        return schema["default"]
    if not schema.get("type") and "properties" not in schema:
        for key in ("oneOf", "anyOf"):
            if schema.get(key):
                return sample(schema[key][0], rng)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string" or (kind is None and ("minLength" in schema or "format" in schema)):
        fmt = schema.get("format")
        if fmt == "date-time":  # increasing: a start comes before its end
            return f"2031-06-10T{next(_HOURS):02d}:00:00Z"
        if fmt == "date":
            return "2030-01-01"
        if fmt == "email":
            return "someone@example.org"
        text = "sample text".ljust(schema.get("minLength", 0), "x")[: schema.get("maxLength", 1000)]
        if "pattern" in schema:
            return _matching(schema["pattern"], text)
        return text
    if kind in ("integer", "number"):
        return schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1 if "exclusiveMinimum" in schema else 1)
    if kind == "boolean":
        return rng.choice([True, False]) if rng is not None else True
    if kind == "array":
        return [sample(schema.get("items") or {}, rng) for _ in range(schema.get("minItems", 0))]
    if kind == "object" or "properties" in schema:
        return {k: sample(v, rng) for k, v in (schema.get("properties") or {}).items()
                if not (isinstance(v, dict) and v.get("readOnly"))}
    return None


def _matching(pattern: str, preferred: str) -> str:
    import re
    import warnings

    for candidate in (preferred, "sample", "sample_text", "x", "X", "a1", "CHG-1", "1", "2030-01-01"):
        if re.search(pattern, candidate):
            return candidate
    from hypothesis import strategies as st

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return st.from_regex(pattern, fullmatch=True).example()


def start_event_form(pack, key: str) -> str | None:
    """``camunda:formKey`` of the process's top-level start event (message start events included)."""
    from lxml import etree

    resource = pack.parsed.processes[key].file
    root = etree.fromstring(dict(pack.files)[resource])
    ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL"}
    for process in root.iterfind("bpmn:process", ns):
        if process.get("id") == key:
            for start in process.iterfind("bpmn:startEvent", ns):
                value = start.get("{http://camunda.org/schema/1.0/bpmn}formKey")
                if value:
                    return value
    return None


def expected_roles(pack, key: str, task_view) -> set[str]:
    """Who the pack says a task is for, computed from the pack files (not from the task row)."""
    rules = pack.rules[key]
    entry = rules.raci.get(task_view.task_definition_key)
    if task_view.phase == "signoff":
        return {entry.accountable}
    if entry is not None and entry.responsible:
        return set(entry.responsible)
    meta = pack.parsed.processes[key].user_tasks.get(task_view.task_definition_key)
    if meta is not None and meta.candidate_groups:
        return set(meta.candidate_groups)
    return {task_view.lane} if task_view.lane else set()


def inbox_users(engine, task_view) -> set[str]:
    """Users whose inbox (candidate or assignee) holds the task."""
    out = {task_view.assignee} if task_view.assignee else set()  # an assigned task is in its assignee's inbox
    for user in engine.directory.users.values():
        mine, _ = engine.tasks.query(candidate_user=user.id, process_instance_id=task_view.process_instance_id,
                                     size=500)
        if any(t.id == task_view.id for t in mine):
            out.add(user.id)
    return out


def walk(engine, pack, key: str, *, starter, max_steps: int = 60, rng: Any = None,
         start_hints: dict[str, Any] | None = None,
         task_hints: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, str, frozenset[str]]]:
    """Start ``key`` and work through its human tasks. Before each task is picked up, the set of users
    whose inbox holds it must equal the holders of the roles the pack names (RACI responsible, lane
    fallback; accountable during sign-off). Returns the (task, phase, users) seen.

    Without ``rng`` the walk takes the happy path; with one, form values are random (other branches). A
    task reached a fourth time ends the walk (generated values a process keeps sending back)."""
    from itsmflow.engine.errors import Forbidden, ValidationFailed

    directory = engine.directory
    rules = pack.rules[key]
    model = pack.parsed.processes[key]
    form_key = rules.start_form or start_event_form(pack, key)
    start_form = pack.forms.get(form_key, {}).get("schema") if form_key else None

    def start_variables(r: Any) -> dict[str, Any]:
        return {**(sample(start_form, r) if start_form else {}), **(start_hints or {})}

    def start(r: Any) -> str:
        if model.start_messages and not rules.start_form:  # started by a message: send it
            result = engine.messages.correlate(model.start_messages[0], variables=start_variables(r), actor="walker")
            return result.started[0]
        return engine.runtime.start(key, variables=start_variables(r), principal=starter).id

    try:
        instance_id = start(rng)
    except ValidationFailed:
        if rng is None:
            raise
        instance_id = start(None)
    seen: list[tuple[str, str, frozenset[str]]] = []
    checked: set[tuple[str, str, str | None]] = set()
    for _ in range(max_steps):
        tasks, _ = engine.tasks.query(process_instance_id=instance_id, size=500)
        actionable = []
        for t in tasks:  # check every open task's inbox once (per phase and assignee)
            expected = {u.id for u in directory.users.values() if u.roles & expected_roles(pack, key, t)}
            expected |= set(t.candidate_users)
            if t.assignee:  # camunda:assignee: an assigned task is in its assignee's inbox only
                expected = {t.assignee}
            if (t.id, t.phase, t.assignee) not in checked:
                checked.add((t.id, t.phase, t.assignee))
                actual = inbox_users(engine, t)
                assert actual == expected, (key, t.task_definition_key, t.phase, sorted(actual), sorted(expected))
                seen.append((t.task_definition_key, t.phase, frozenset(actual)))
            workers = sorted(u for u in expected - {t.submitted_by} if directory.get(u))
            if workers:  # not e.g. assigned (camunda:assignee="${…}") to a generated user id
                actionable.append((t, workers))
        if not actionable or (seen and seen.count(seen[-1]) > 3):
            break  # done, stuck, or generated values keep sending the process back: a walker limit
        t, workers = actionable[0]
        entry = rules.raci.get(t.task_definition_key)
        if t.phase == "work" and entry is not None:
            for role in entry.required_consultations:
                holder = sorted(u.id for u in directory.users_with_role(role))[0]
                engine.consultations.record(t.id, directory.get(holder).principal(), "no objection", role)
        form = rules.forms.get(t.form_key, {}).get("schema") if t.form_key else None
        hints = (task_hints or {}).get(t.task_definition_key, {})

        def values(r: Any) -> dict[str, Any]:
            return {**(sample(form, r) if form else {}), **hints}

        done = False
        for user_id in workers:
            principal = directory.get(user_id).principal()
            try:
                if t.phase == "signoff":
                    if rng is not None and rng.random() < 0.3:
                        engine.tasks.signoff(t.id, principal, "rejected", "not good enough")
                    else:
                        engine.tasks.signoff(t.id, principal, "approved")
                else:
                    if t.assignee is None:
                        engine.tasks.claim(t.id, principal)
                    try:
                        engine.tasks.complete(t.id, principal, values(rng))
                    except ValidationFailed:
                        if rng is None:
                            raise
                        # random values broke a conditional rule of the form: take the happy path here
                        engine.tasks.complete(t.id, principal, values(None))
                done = True
                break
            except Forbidden:
                continue  # segregation of duties: the next candidate
        assert done, f"nobody could work on {key}.{t.task_definition_key} ({t.phase}): {workers}"
    return seen


# -- an organisation whose tailoring sets other policy values (e.g. short periods in a scenario test) ----
def organisation_with_policies(org_dir, dest, policies: dict[str, dict[str, Any]], *, pack: str = "iso20000"):
    """A copy of the organisation folder ``org_dir`` (directory file, tailoring with its BPMN and forms) in
    ``dest`` whose tailoring also sets ``policies`` (policy name → values, merged key by key into what the
    organisation's tailoring already sets; docs/tailoring.md). The copy keeps the organisation's name. Returns
    the new folder, to apply with ``engine.packs.apply(pack_dir, folder)`` as ``itsmflow pack apply`` does."""
    import shutil
    from pathlib import Path

    import yaml

    def merged(base: Any, override: Any) -> Any:
        if isinstance(base, dict) and isinstance(override, dict):
            return {**base, **{k: merged(base.get(k), v) for k, v in override.items()}}
        return override

    org_dir, dest = Path(org_dir), Path(dest)
    shutil.copytree(org_dir, dest)
    if not (org_dir / "organisation.yaml").is_file():  # the name was the folder's
        (dest / "organisation.yaml").write_text(yaml.safe_dump({"name": org_dir.name}), encoding="utf-8")
    tailoring_file = dest / "tailoring.yaml"
    tailoring = (yaml.safe_load(tailoring_file.read_text(encoding="utf-8")) if tailoring_file.is_file()
                 else {"pack": pack, "description": f"Organisation {org_dir.name} with test policy values."})
    tailoring["policies"] = merged(tailoring.get("policies") or {}, policies)
    tailoring_file.write_text(yaml.safe_dump(tailoring, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return dest
