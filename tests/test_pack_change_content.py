"""Content checks of the ISO/IEC 20000 change processes (pack iso20000): BPMN, diagrams, forms, policies,
RACI/SoD references, the policy scripts, and a walk of each process on the real engine.

RACI and segregation-of-duties *behaviour* is not asserted here (the engine does not enforce them yet);
the scenario tests of the change processes live in tests/test_pack_change.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import pytest
import yaml
from lxml import etree
from sqlalchemy import text

from itsmflow.engine.bpmn import parse_deployment
from itsmflow.engine.directory import Directory
from itsmflow.engine.sandbox import check_expression, run_script
from itsmflow.demo import RFC as DEMO_RFC

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "process_packs" / "iso20000"
BPMN_DIR = ROOT / "bpmn" / "iso20000"
FORMS = ROOT / "forms" / "iso20000"
KEYS = ("change_normal", "change_emergency", "change_preapproved")
FILES = {key: BPMN_DIR / f"{key}.bpmn" for key in KEYS}

from .bpmn_content import CAMUNDA, CONTRACT_ROLES, FLOW_NODES, NS, SIZES, check_gateway


def _tree(key):
    return etree.parse(str(FILES[key]))


def _process(key):
    return _tree(key).getroot().find("bpmn:process", NS)


def _nodes(proc):
    return [el for el in proc.iter() if etree.QName(el).localname in FLOW_NODES]


def _kind(el):
    name = etree.QName(el).localname
    if name.endswith("Event"):
        return "event"
    if name.endswith("Gateway"):
        return "gateway"
    return "task"


def _script(key, element_id):
    el = _process(key).find(f".//bpmn:scriptTask[@id='{element_id}']", NS)
    return el.find("bpmn:script", NS).text


def _pack():
    return yaml.safe_load((PACK / "pack.yaml").read_text(encoding="utf-8"))


def load_policies() -> dict:
    return {p["name"]: yaml.safe_load((PACK / p["file"]).read_text(encoding="utf-8")) for p in _pack()["policies"]}


def _form(key):
    return json.loads((FORMS / f"{key}.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# BPMN and diagrams
# ------------------------------------------------------------------------------------------------

def test_change_bpmn_parses_without_issues():
    files = [(p.name, p.read_bytes()) for p in FILES.values()]
    parsed = parse_deployment(files, script_validator=check_expression)
    assert sorted(parsed.processes) == sorted(KEYS)
    assert parsed.warnings == []
    assert parsed.non_executable == []


@pytest.mark.parametrize("key", KEYS)
def test_process_is_one_pool_with_a_lane_per_contract_role(key):
    root = _tree(key).getroot()
    proc = root.find("bpmn:process", NS)
    assert proc.get("id") == key and proc.get("isExecutable") == "true"
    participants = root.findall("bpmn:collaboration/bpmn:participant", NS)
    assert [p.get("processRef") for p in participants] == [key]
    lanes = proc.findall("bpmn:laneSet/bpmn:lane", NS)
    names = [lane.get("name") for lane in lanes]
    assert names and len(names) == len(set(names))
    assert set(names) <= CONTRACT_ROLES
    assert set(names) <= set(_pack()["roles"])
    # every flow node is in exactly one lane
    in_lanes = [ref.text for lane in lanes for ref in lane.findall("bpmn:flowNodeRef", NS)]
    assert sorted(in_lanes) == sorted(n.get("id") for n in _nodes(proc))


@pytest.mark.parametrize("key", KEYS)
def test_gateways_and_their_flows_are_named_and_complete(key):
    proc = _process(key)
    flows = proc.findall("bpmn:sequenceFlow", NS)
    gateways = [*proc.findall("bpmn:exclusiveGateway", NS), *proc.findall("bpmn:parallelGateway", NS)]
    assert gateways
    for gw in gateways:
        check_gateway(gw, flows)


@pytest.mark.parametrize("key", KEYS)
def test_diagram_interchange_is_complete_and_tidy(key):
    root = _tree(key).getroot()
    proc = root.find("bpmn:process", NS)
    plane = root.find("bpmndi:BPMNDiagram/bpmndi:BPMNPlane", NS)
    shapes = {}
    for s in plane.findall("bpmndi:BPMNShape", NS):
        b = s.find("dc:Bounds", NS)
        shapes[s.get("bpmnElement")] = tuple(float(b.get(a)) for a in ("x", "y", "width", "height"))
    edges = {e.get("bpmnElement"): e.findall("di:waypoint", NS) for e in plane.findall("bpmndi:BPMNEdge", NS)}
    pool = root.find("bpmn:collaboration/bpmn:participant", NS).get("id")
    lanes = {lane.get("id"): lane for lane in proc.findall("bpmn:laneSet/bpmn:lane", NS)}
    nodes = _nodes(proc)
    assert pool in shapes
    assert set(lanes) <= set(shapes)
    assert {n.get("id") for n in nodes} <= set(shapes)
    for f in proc.findall("bpmn:sequenceFlow", NS):
        assert len(edges.get(f.get("id"), [])) >= 2, f"sequence flow {f.get('id')} has no edge"

    def inside(inner, outer):
        x, y, w, h = inner
        ox, oy, ow, oh = outer
        return ox <= x and oy <= y and x + w <= ox + ow and y + h <= oy + oh

    # lanes stacked inside the pool, nodes inside their lane, sizes as agreed, no overlapping shapes
    lane_boxes = [shapes[lid] for lid in lanes]
    assert all(inside(b, shapes[pool]) for b in lane_boxes)
    for a, b in zip(lane_boxes, lane_boxes[1:]):
        assert a[1] + a[3] == b[1]
    lane_of = {ref.text: lid for lid, lane in lanes.items() for ref in lane.findall("bpmn:flowNodeRef", NS)}
    for n in nodes:
        box = shapes[n.get("id")]
        assert box[2:] == SIZES[_kind(n)], n.get("id")
        if etree.QName(n).localname != "boundaryEvent":
            assert inside(box, shapes[lane_of[n.get("id")]]), n.get("id")
    boxes = [(n.get("id"), shapes[n.get("id")]) for n in nodes if etree.QName(n).localname != "boundaryEvent"]
    for i, (ida, (x, y, w, h)) in enumerate(boxes):
        for idb, (x2, y2, w2, h2) in boxes[i + 1:]:
            assert not (x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h), f"{ida} overlaps {idb}"
    # edges are orthogonal
    for fid, points in edges.items():
        pts = [(float(p.get("x")), float(p.get("y"))) for p in points]
        for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
            assert x1 == x2 or y1 == y2, fid


# ------------------------------------------------------------------------------------------------
# forms
# ------------------------------------------------------------------------------------------------

def _form_keys():
    out = []
    for key in KEYS:
        proc = _process(key)
        for el in proc.findall("bpmn:startEvent", NS) + proc.findall("bpmn:userTask", NS):
            out.append((key, el.get("id"), el.get(CAMUNDA + "formKey")))
    return out


@pytest.mark.parametrize("key,element,form_key", _form_keys())
def test_every_user_task_and_start_event_has_a_valid_form(key, element, form_key):
    assert form_key, f"{key}:{element} has no camunda:formKey"
    schema = _form(form_key)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema.get("title") and schema.get("description")
    assert set(schema.get("required", [])) <= set(schema["properties"])
    for name, prop in schema["properties"].items():
        if prop.get("readOnly"):
            continue  # read-only fields show process variables under their own names (e.g. schedule_clash)
        assert name[0].islower() and "_" not in name and "-" not in name, f"{form_key}: {name} is not camelCase"
    ui = FORMS / f"{form_key}.ui.json"
    if ui.exists():
        assert set(json.loads(ui.read_text(encoding="utf-8")).get("ui:order", [])) <= set(schema["properties"])


def test_decision_fields_follow_the_contract():
    for path in FORMS.glob("change_*.json"):
        if path.name.endswith(".ui.json"):
            continue
        schema = json.loads(path.read_text(encoding="utf-8"))
        props = schema["properties"]
        if "decision" in props:
            assert props["decision"]["enum"] == ["approved", "rejected"]
            assert "reason" in props
            validator = jsonschema.Draft202012Validator(schema)
            base = {k: _example(props[k]) for k in schema["required"]}
            assert not list(validator.iter_errors({**base, "decision": "approved"})), path.name
            assert list(validator.iter_errors({**base, "decision": "rejected"})), f"{path.name}: reason not required"
            assert not list(validator.iter_errors({**base, "decision": "rejected", "reason": "too risky"}))
        if "outcome" in props:
            assert props["outcome"]["enum"] == ["successful", "unsuccessful"]
        if "reviewOutcome" in props:
            assert "lessonsLearned" in props and {"reviewOutcome", "lessonsLearned"} <= set(schema["required"])
    assert _form("change_classify")["properties"]["category"]["enum"] == ["minor", "significant", "major"]
    assert _form("change_classify")["properties"]["risk"]["enum"] == ["low", "medium", "high"]


def _example(prop):
    """A minimal valid value for a form property (used to build test submissions)."""
    if "const" in prop:
        return prop["const"]
    if "enum" in prop:
        return prop["enum"][0]
    kind = prop.get("type")
    if kind == "array":
        item = _example(prop["items"])
        return [item] * max(1, prop.get("minItems", 0))
    if kind == "object":
        return {k: _example(prop["properties"][k]) for k in prop.get("required", [])}
    if kind == "boolean":
        return True
    if kind in ("number", "integer"):
        return prop.get("minimum", 0)
    if prop.get("format") == "date-time":
        return "2030-01-01T10:00:00Z"
    if "pattern" in prop:
        return "x_value" if "_" in prop["pattern"] else "x-value"
    return "text"


# ------------------------------------------------------------------------------------------------
# pack manifest, policies, RACI, SoD
# ------------------------------------------------------------------------------------------------

def test_pack_manifest_lists_the_change_processes():
    pack = _pack()
    assert pack["name"] == "iso20000"
    assert set(pack["roles"]) == CONTRACT_ROLES
    listed = {p["key"]: p for p in pack["processes"]}
    for key in KEYS:
        assert (PACK / listed[key]["bpmn"]).resolve() == FILES[key].resolve()
    assert (PACK / pack["forms"]).resolve() == FORMS.resolve()
    for name in ("raci", "sod"):
        assert (PACK / pack[name]).is_file()


def test_policies_validate_against_their_schemas():
    pack = _pack()
    names = [p["name"] for p in pack["policies"]]
    assert set(names) >= {"change_authority", "freeze_windows", "emergency", "pir_required", "preapproved_models"}
    for p in pack["policies"]:
        schema = json.loads((PACK / p["schema"]).read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        value = yaml.safe_load((PACK / p["file"]).read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(value)
        assert value.get("defaults") is True, f"policy {p['name']} must be marked as pack defaults"


def test_preapproved_policy_carries_the_change_model_catalogue():
    catalogue = yaml.safe_load((PACK / "change_models.yaml").read_text(encoding="utf-8"))
    assert load_policies()["preapproved_models"]["models"] == catalogue["models"]


def test_raci_and_sod_name_existing_tasks_and_roles():
    roles = set(_pack()["roles"])
    raci = yaml.safe_load((PACK / "raci.yaml").read_text(encoding="utf-8"))["processes"]
    for key in KEYS:
        proc = _process(key)
        lanes = {ref.text: lane.get("name") for lane in proc.findall("bpmn:laneSet/bpmn:lane", NS)
                 for ref in lane.findall("bpmn:flowNodeRef", NS)}
        user_tasks = {t.get("id") for t in proc.findall("bpmn:userTask", NS)}
        entries = raci[key]["tasks"]
        assert set(entries) == user_tasks, key
        for task_id, entry in entries.items():
            assert entry["responsible"] == [lanes[task_id]], f"{key}:{task_id} responsible is not its lane"
            named = set(entry["responsible"]) | {entry["accountable"]} | set(entry.get("consulted", [])) | set(
                entry.get("informed", []))
            assert named <= roles, f"{key}:{task_id}"
            assert entry.get("consultation", "required") in ("required", "advisory")
    assert raci["change_normal"]["tasks"]["assess"]["consulted"] == ["configuration-manager"]
    assert raci["change_normal"]["tasks"]["assess"]["consultation"] == "required"

    rules = {r["id"]: r for r in yaml.safe_load((PACK / "sod.yaml").read_text(encoding="utf-8"))["rules"]}
    assert {"initiator-cannot-authorise", "builder-not-tester", "implementer-not-reviewer",
            "emergency-initiator-cannot-approve"} <= set(rules)
    for rule in rules.values():
        if rule["process"] not in KEYS:
            continue  # other processes' rules are checked by their own content tests
        tasks = {t.get("id") for t in _process(rule["process"]).findall("bpmn:userTask", NS)}
        assert set(rule["tasks"]) <= tasks, rule["id"]
        for other in rule["not_same_as"]:
            assert other in ("initiator", "sibling") or (other.startswith("task:") and other[5:] in tasks), rule["id"]


# ------------------------------------------------------------------------------------------------
# the policy scripts, run in the sandbox
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("category,risk,cost,expected", [
    ("minor", "low", 500, "change-manager"),
    ("minor", "medium", 500, "change-authority"),
    ("significant", "low", 0, "change-authority"),
    ("minor", "low", 20000, "change-authority"),
    ("minor", "low", 250000, "cab"),
    ("major", "low", 0, "cab"),
    ("significant", "high", 0, "cab"),
])
def test_authority_matrix(category, risk, cost, expected):
    out = run_script(_script("change_normal", "determine_authority"),
                     {"policies": load_policies(), "category": category, "risk": risk, "estimatedCost": cost})
    assert out["required_authority"] == expected
    assert out["authority_basis"]["requiredAuthority"] == expected
    assert "authority_for" not in out  # helper functions never end up in the instance data


@pytest.mark.parametrize("start,end,services,clash", [
    ("2025-12-24T10:00:00Z", "2025-12-24T12:00:00Z", ["mail"], "Year-end freeze"),
    ("2025-12-19T17:00:00Z", "2025-12-19T18:30:00+00:00", ["mail"], "Year-end freeze"),  # overlaps the start
    ("2025-12-19T16:00:00Z", "2025-12-19T18:00:00Z", ["mail"], None),  # ends when the freeze begins
    ("2026-03-10T20:00:00", "2026-03-10T22:00:00", ["mail"], None),  # naive = UTC
    ("2026-03-10T22:00:00Z", "2026-03-10T20:00:00Z", ["mail"], "must be later"),
])
def test_freeze_window_check(start, end, services, clash):
    out = run_script(_script("change_normal", "check_freeze"),
                     {"policies": load_policies(), "plannedStart": start, "plannedEnd": end,
                      "affectedServices": services}, functions={"schedule_entries": NO_OTHER_CHANGES})
    if clash is None:
        assert out["schedule_clash"] is None and out["scheduleState"] == "scheduled"
    else:
        assert clash in out["schedule_clash"] and out["scheduleState"] == "approved"
    assert set(out) == {"policies", "plannedStart", "plannedEnd", "affectedServices", "schedule_clash",
                        "scheduleState"}


def NO_OTHER_CHANGES(name, start, end):  # noqa: N802 - stands in for the engine's schedule_entries
    assert name == "changes"
    return []


def _entry(key, start, end, services, state="scheduled"):
    return {"processInstanceId": "p-" + key, "businessKey": key, "definitionKey": "change_normal",
            "plannedStart": start, "plannedEnd": end, "state": state, "summary": key, "scope": services,
            "instanceState": "active"}


@pytest.mark.parametrize("others,clash", [
    ([_entry("RFC-9", "2030-01-01T09:00:00+00:00", "2030-01-01T12:00:00+00:00", ["mail"])], "RFC-9"),
    ([_entry("RFC-9", "2030-01-01T09:00:00+00:00", "2030-01-01T12:00:00+00:00", ["web"])], None),  # other service
    ([_entry("RFC-9", "2030-01-01T09:00:00+00:00", "2030-01-01T12:00:00+00:00", ["mail"], "approved")], None),
    ([_entry("RFC-8", "2030-01-01T09:00:00+00:00", "2030-01-01T12:00:00+00:00", ["web"]),
      _entry("RFC-9", "2030-01-01T10:30:00+00:00", "2030-01-01T11:00:00+00:00", ["mail", "web"])], "RFC-9"),
])
def test_schedule_clash_with_scheduled_changes_on_shared_services(others, clash):
    asked = []

    def entries(name, start, end):
        asked.append((name, start, end))
        return others

    out = run_script(_script("change_normal", "check_freeze"),
                     {"policies": load_policies(), "plannedStart": "2030-01-01T10:00:00Z",
                      "plannedEnd": "2030-01-01T11:00:00Z", "affectedServices": ["mail"]},
                     functions={"schedule_entries": entries})
    assert asked == [("changes", datetime(2030, 1, 1, 10, tzinfo=timezone.utc),
                      datetime(2030, 1, 1, 11, tzinfo=timezone.utc))]
    if clash is None:
        assert out["schedule_clash"] is None and out["scheduleState"] == "scheduled"
    else:
        assert clash in out["schedule_clash"] and "mail" in out["schedule_clash"]
        assert out["scheduleState"] == "approved"


def test_freeze_window_limited_to_services_and_datetime_values():
    policies = load_policies()
    policies["freeze_windows"] = {"windows": [
        {"start": "2030-01-01T00:00:00Z", "end": "2030-01-02T00:00:00Z", "reason": "billing run",
         "services": ["billing"]}]}
    script = _script("change_normal", "check_freeze")
    start = datetime(2030, 1, 1, 10, tzinfo=timezone.utc)
    end = datetime(2030, 1, 1, 11, tzinfo=timezone.utc)
    base = {"policies": policies, "plannedStart": start, "plannedEnd": end}
    fns = {"schedule_entries": NO_OTHER_CHANGES}
    assert run_script(script, {**base, "affectedServices": ["mail"]}, functions=fns)["schedule_clash"] is None
    assert "billing run" in run_script(script, {**base, "affectedServices": ["mail", "billing"]},
                                       functions=fns)["schedule_clash"]


@pytest.mark.parametrize("model,cis,risk,reason", [
    ("std-os-security-patch", [{"ciId": "srv-1", "ciType": "server"}], "low", None),
    ("no-such-model", [{"ciId": "srv-1", "ciType": "server"}], "low", "no pre-approved change model"),
    ("std-os-security-patch", [{"ciId": "db-1", "ciType": "database"}], "low", "db-1"),
    ("std-os-security-patch", [{"ciId": "srv-1", "ciType": "server"}], "medium", "above the maximum risk"),
    ("std-filesystem-extension", [{"ciId": "srv-1", "ciType": "server"}], "low", "suspended"),
])
def test_preapproved_model_check(model, cis, risk, reason):
    out = run_script(_script("change_preapproved", "check_model"),
                     {"policies": load_policies(), "model": model, "affectedCis": cis, "risk": risk})
    assert out["model_matched"] is (reason is None)
    if reason is None:
        assert out["refusalReason"] is None and out["preapproved_model"]["id"] == model
    else:
        assert reason in out["refusalReason"]


def test_emergency_policy_script_sets_the_deadline():
    out = run_script(_script("change_emergency", "apply_emergency_policy"),
                     {"policies": load_policies(), "emergencyCriterion": "security_threat"})
    assert out["ecab_deadline"] == "PT1H" and out["emergency_criterion_recognised"] is True
    assert "emergency_policy" not in out


# ------------------------------------------------------------------------------------------------
# walking the processes on the engine
# ------------------------------------------------------------------------------------------------

USERS = {
    "ann": ["change-initiator"], "max": ["change-manager"], "cara": ["change-authority"], "carl": ["cab-member"],
    "cleo": ["cab-member"], "cy": ["cab-member"],
    "bill": ["change-builder"], "tess": ["independent-tester"], "ian": ["change-implementer"],
    "sol": ["service-owner"], "root": ["admin"],
}


@pytest.fixture
def directory() -> Directory:  # overrides the conftest fixture: people holding the pack's roles
    return Directory.from_dict({"users": [{"id": u, "name": u.title(), "roles": r} for u, r in USERS.items()]})


@pytest.fixture
def change_engine(engine):
    engine.repository.deploy("iso20000 change", [(p.name, p.read_bytes()) for p in FILES.values()])
    return engine


def _validate(form_key, data):
    validator = jsonschema.Draft202012Validator(_form(form_key), format_checker=jsonschema.FormatChecker())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert not errors, f"{form_key}: {errors}"


def start(engine, key, user, data, business_key):
    start_form = _process(key).find("bpmn:startEvent", NS).get(CAMUNDA + "formKey")
    _validate(start_form, data)
    variables = {**data, "policies": load_policies()}
    return engine.runtime.start(key, business_key=business_key, variables=variables,
                                principal=engine.directory.get(user).principal()).id


def open_keys(engine, instance_id):
    return sorted(t.task_definition_key for t in engine.tasks.query(process_instance_id=instance_id)[0])


def cab_votes(engine, instance_id, votes, path):
    """One vote per CAB member (the multi-instance task cab_decision); voting stops when the rule decides."""
    for user, vote in votes:
        open_votes = [t for t in engine.tasks.query(process_instance_id=instance_id)[0]
                      if t.task_definition_key == "cab_decision"]
        assert open_votes, f"no CAB vote open for {user}: open {open_keys(engine, instance_id)}"
        _validate("change_cab_decision", vote)
        engine.tasks.complete(open_votes[0].id, engine.directory.get(user).principal(), vote)
    assert "cab_decision" not in open_keys(engine, instance_id)
    path.append("cab_decision")


def complete(engine, instance_id, key, user, data, path):
    tasks = [t for t in engine.tasks.query(process_instance_id=instance_id)[0] if t.task_definition_key == key]
    assert len(tasks) == 1, f"expected task {key}, open: {open_keys(engine, instance_id)}"
    task = tasks[0]
    assert set(task.candidate_roles) == set(USERS[user]), (key, task.candidate_roles)
    _validate(task.form_key, data)
    engine.tasks.complete(task.id, engine.directory.get(user).principal(), data)
    path.append(key)


RFC = {
    **DEMO_RFC,  # the sample RFC of `itsmflow demo`
    "requestedWindow": {"start": "2030-03-09T20:00:00Z", "end": "2030-03-09T23:00:00Z"},
}


def test_normal_change_walks_from_rfc_to_closure(change_engine):
    engine, path = change_engine, []
    iid = start(engine, "change_normal", "ann", RFC, "RFC-1")
    complete(engine, iid, "classify", "max", {"category": "significant", "risk": "medium", "priority": "medium",
                                               "businessImpact": "medium"}, path)
    complete(engine, iid, "assess", "max", {
        "risk": "medium", "assessmentSummary": "Routine upgrade, tested by the vendor.",
        "serviceImpact": "Short delays in mail delivery.", "technicalFeasibility": "feasible",
        "securityControlsBypassed": False, "backOutPlanAdequate": True}, path)
    variables = engine.runtime.get(iid).variables
    assert variables["required_authority"] == "change-authority"
    complete(engine, iid, "authorise", "cara", {"decision": "approved"}, path)
    complete(engine, iid, "schedule", "max", {"plannedStart": "2030-03-09T20:00:00Z",
                                              "plannedEnd": "2030-03-09T23:00:00Z"}, path)
    assert engine.runtime.get(iid).variables["schedule_clash"] is None
    complete(engine, iid, "build", "bill", {"buildResult": "built", "buildSummary": "Packages staged on both nodes."},
             path)
    complete(engine, iid, "test", "tess", {
        "testResult": "passed", "testEvidence": "TP-17 run on staging.", "builtToSpecification": True,
        "verifiableDuringDeployment": True, "backOutTested": True}, path)
    complete(engine, iid, "confirm_window", "ian", {"windowDecision": "proceed"}, path)
    complete(engine, iid, "deploy", "ian", {"outcome": "successful", "implementationNotes": "Both nodes on 10.2.",
                                            "actualStart": "2030-03-09T20:05:00Z",
                                            "actualEnd": "2030-03-09T21:40:00Z"}, path)
    # significant changes get a full PIR (policy pir_required)
    assert engine.runtime.get(iid).variables["pir_required"] is True
    complete(engine, iid, "pir", "max", {"reviewOutcome": "objectives_met", "lessonsLearned": "None worth noting.",
                                         "documentationComplete": True}, path)
    instance = engine.runtime.get(iid)
    assert instance.state == "completed", instance.incidents
    assert path == ["classify", "assess", "authorise", "schedule", "build", "test", "confirm_window", "deploy", "pir"]
    events = engine.history.events(iid)
    assert any(e.type == "message_thrown" and e.data.get("name") == "configuration_update" for e in events)


def test_normal_change_minor_goes_to_change_manager_and_summary_review(change_engine):
    engine, path = change_engine, []
    iid = start(engine, "change_normal", "ann", {**RFC, "estimatedCost": 300}, "RFC-2")
    complete(engine, iid, "classify", "max", {"category": "minor", "risk": "low", "priority": "low",
                                               "businessImpact": "low"}, path)
    complete(engine, iid, "assess", "max", {
        "risk": "low", "assessmentSummary": "Trivial.", "serviceImpact": "None.",
        "technicalFeasibility": "feasible", "securityControlsBypassed": False, "backOutPlanAdequate": True}, path)
    assert open_keys(engine, iid) == ["authorise_manager"]
    complete(engine, iid, "authorise_manager", "max", {"decision": "approved"}, path)
    # a planned window inside the year-end freeze comes back to scheduling with the reason
    complete(engine, iid, "schedule", "max", {"plannedStart": "2025-12-24T10:00:00Z",
                                              "plannedEnd": "2025-12-24T11:00:00Z"}, path)
    assert "Year-end freeze" in engine.runtime.get(iid).variables["schedule_clash"]
    complete(engine, iid, "schedule", "max", {"plannedStart": "2030-03-09T20:00:00Z",
                                              "plannedEnd": "2030-03-09T21:00:00Z"}, path)
    complete(engine, iid, "build", "bill", {"buildResult": "built", "buildSummary": "Done."}, path)
    complete(engine, iid, "test", "tess", {
        "testResult": "passed", "testEvidence": "Smoke test.", "builtToSpecification": True,
        "verifiableDuringDeployment": True, "backOutTested": True}, path)
    complete(engine, iid, "confirm_window", "ian", {"windowDecision": "proceed"}, path)
    complete(engine, iid, "deploy", "ian", {"outcome": "successful", "implementationNotes": "Done."}, path)
    complete(engine, iid, "verify_close", "max", {"reviewOutcome": "objectives_met", "lessonsLearned": "none",
                                                  "ciLinksVerified": True, "documentationComplete": True}, path)
    assert engine.runtime.get(iid).state == "completed"
    assert path == ["classify", "assess", "authorise_manager", "schedule", "schedule", "build", "test",
                    "confirm_window", "deploy", "verify_close"]


EMERGENCY_RFC = {
    "summary": "Block the exploited VPN login path",
    "description": "Disable the legacy authentication endpoint on the VPN concentrators.",
    "emergencyCriterion": "security_threat",
    "emergencyJustification": "The endpoint is being exploited now (security incident SI-88).",
    "affectedServices": ["remote access"],
    "affectedCis": [{"ciId": "vpn-01"}],
    "linkedIncident": "SI-88",
    "proposedAction": "Apply the vendor's configuration change to disable the endpoint.",
    "backOutPlan": {"approach": "reverse", "steps": "Re-enable the endpoint."},
}


def test_emergency_change_walks_with_late_approval_escalated(change_engine):
    engine, path = change_engine, []
    iid = start(engine, "change_emergency", "ann", EMERGENCY_RFC, "ECR-1")
    assert open_keys(engine, iid) == ["ecab_approval"]
    assert engine.runtime.get(iid).variables["ecab_deadline"] == "PT1H"
    assert engine.jobs.run_due() == 0  # the approval deadline is an hour away
    with engine.db.begin() as conn:
        conn.execute(text("UPDATE job SET due_at = :t"), {"t": datetime(2000, 1, 1, tzinfo=timezone.utc)})
    assert engine.jobs.run_due() == 1
    assert open_keys(engine, iid) == ["ecab_approval", "escalate_approval"]  # non-interrupting
    complete(engine, iid, "escalate_approval", "max", {"escalationAction": "chased_approvers",
                                                       "escalationNotes": "Called the on-call approver."}, path)
    complete(engine, iid, "ecab_approval", "cara", {"decision": "approved", "approvers": ["cara"],
                                                    "approvalChannel": "phone"}, path)
    complete(engine, iid, "implement", "ian", {"outcome": "successful", "implementationNotes": "Endpoint disabled.",
                                               "deferredSteps": ["independent test"]}, path)
    complete(engine, iid, "review", "max", {
        "bypassedStepsCompleted": True, "documentationComplete": True, "trueEmergency": True,
        "trueEmergencyRationale": "Active exploitation.", "reviewOutcome": "objectives_met",
        "lessonsLearned": "Keep the vendor hardening guide current."}, path)
    assert engine.runtime.get(iid).state == "completed"
    assert path == ["escalate_approval", "ecab_approval", "implement", "review"]


PREAPPROVED_REQUEST = {
    "model": "std-os-security-patch",
    "summary": "March security patch on srv-web-01",
    "affectedCis": [{"ciId": "srv-web-01", "ciType": "server"}],
    "risk": "low",
}


def test_preapproved_change_walks_to_closure(change_engine):
    engine, path = change_engine, []
    iid = start(engine, "change_preapproved", "ann", PREAPPROVED_REQUEST, "SCR-1")
    assert engine.runtime.get(iid).variables["model_matched"] is True
    complete(engine, iid, "implement", "ian", {"outcome": "successful", "implementationNotes": "Patched, rebooted.",
                                               "successChecks": ["Server back in service"]}, path)
    instance = engine.runtime.get(iid)
    assert instance.state == "completed" and path == ["implement"]
    assert any(e.type == "message_thrown" for e in engine.history.events(iid))


def test_preapproved_change_outside_its_model_is_refused(change_engine):
    engine = change_engine
    iid = start(engine, "change_preapproved", "ann", {**PREAPPROVED_REQUEST, "risk": "high"}, "SCR-2")
    instance = engine.runtime.get(iid)
    assert instance.state == "completed" and open_keys(engine, iid) == []
    assert "above the maximum risk" in instance.variables["refusalReason"]


def test_normal_change_loops_back_where_the_lifecycle_says(change_engine):
    """Rejection and resubmission, a change that cannot be built, a failed test, a rescheduled window and an
    unsuccessful deployment: every loop of change_normal once, on the engine."""
    engine, path = change_engine, []
    iid = start(engine, "change_normal", "ann", RFC, "RFC-3")
    classify = {"category": "major", "risk": "high", "priority": "high", "businessImpact": "high"}
    assess = {"risk": "high", "assessmentSummary": "Risky.", "serviceImpact": "Mail down for an hour.",
              "technicalFeasibility": "feasible", "securityControlsBypassed": False, "backOutPlanAdequate": True}
    cab = [("carl", {"decision": "approved"}), ("cleo", {"decision": "approved", "conditions": "Out of hours."})]
    veto = [("carl", {"decision": "rejected", "reason": "No rollback test."}),
            ("cleo", {"decision": "approved"}),
            ("cy", {"decision": "rejected", "reason": "Risky in month-end."})]
    window = {"plannedStart": "2030-03-09T20:00:00Z", "plannedEnd": "2030-03-09T23:00:00Z"}
    passed = {"testResult": "passed", "testEvidence": "TP-17.", "builtToSpecification": True,
              "verifiableDuringDeployment": True, "backOutTested": True}
    complete(engine, iid, "classify", "max", classify, path)
    complete(engine, iid, "assess", "max", assess, path)
    cab_votes(engine, iid, veto, path)
    variables = engine.runtime.get(iid).variables
    assert variables["decision"] == "rejected"
    assert variables["reason"] == "carl: No rollback test.; cy: Risky in month-end."
    assert variables["cabDecision"] == {"rule": "majority", "votesRequired": 3, "approvals": 1, "rejections": 2,
                                        "decision": "rejected", "voters": ["carl", "cleo", "cy"]}
    complete(engine, iid, "revise", "ann", {"revisionAction": "resubmit", "revisionNotes": "Rollback tested."}, path)
    complete(engine, iid, "classify", "max", classify, path)
    complete(engine, iid, "assess", "max", assess, path)
    cab_votes(engine, iid, cab, path)
    complete(engine, iid, "schedule", "max", window, path)
    complete(engine, iid, "build", "bill", {"buildResult": "cannot_build", "buildIssue": "Licence missing."}, path)
    complete(engine, iid, "assess", "max", assess, path)
    cab_votes(engine, iid, cab, path)
    complete(engine, iid, "schedule", "max", window, path)
    complete(engine, iid, "build", "bill", {"buildResult": "built", "buildSummary": "Staged."}, path)
    complete(engine, iid, "test", "tess", {"testResult": "failed", "testEvidence": "TP-17.",
                                           "builtToSpecification": True, "verifiableDuringDeployment": True,
                                           "backOutTested": False, "testFailures": "Back-out fails."}, path)
    complete(engine, iid, "build", "bill", {"buildResult": "built", "buildSummary": "Back-out script fixed."}, path)
    complete(engine, iid, "test", "tess", passed, path)
    complete(engine, iid, "confirm_window", "ian", {"windowDecision": "reschedule",
                                                    "rescheduleReason": "Data centre power work that night."}, path)
    complete(engine, iid, "assess", "max", assess, path)
    cab_votes(engine, iid, cab, path)
    complete(engine, iid, "schedule", "max", {"plannedStart": "2030-03-16T20:00:00Z",
                                              "plannedEnd": "2030-03-16T23:00:00Z"}, path)
    # built and tested already: the re-approved change goes straight back to the implementer
    complete(engine, iid, "confirm_window", "ian", {"windowDecision": "proceed"}, path)
    complete(engine, iid, "deploy", "ian", {"outcome": "unsuccessful", "implementationNotes": "Node 2 failed.",
                                            "failureReason": "Configuration import error."}, path)
    complete(engine, iid, "backout", "ian", {"remediationAction": "reversed", "actionsTaken": "Reinstalled 9.8.",
                                             "followedPlan": True, "configurationRestored": True}, path)
    complete(engine, iid, "pir", "max", {"reviewOutcome": "not_met", "lessonsLearned": "Test config import.",
                                         "documentationComplete": True}, path)
    instance = engine.runtime.get(iid)
    assert instance.state == "completed", instance.incidents
    assert path == ["classify", "assess", "cab_decision", "revise", "classify", "assess", "cab_decision", "schedule",
                    "build", "assess", "cab_decision", "schedule", "build", "test", "build", "test",
                    "confirm_window", "assess", "cab_decision", "schedule", "confirm_window", "deploy", "backout",
                    "pir"]
    assert not any(e.type == "message_thrown" for e in engine.history.events(iid))


def test_normal_change_withdrawn(change_engine):
    engine, path = change_engine, []
    iid = start(engine, "change_normal", "ann", RFC, "RFC-4")
    complete(engine, iid, "classify", "max", {"category": "significant", "risk": "low", "priority": "low",
                                               "businessImpact": "low"}, path)
    complete(engine, iid, "assess", "max", {
        "risk": "low", "assessmentSummary": "Fine.", "serviceImpact": "None.", "technicalFeasibility": "feasible",
        "securityControlsBypassed": False, "backOutPlanAdequate": True}, path)
    complete(engine, iid, "authorise", "cara", {"decision": "rejected", "reason": "Duplicate of RFC-1."}, path)
    assert engine.runtime.get(iid).variables["reason"] == "Duplicate of RFC-1."
    complete(engine, iid, "revise", "ann", {"revisionAction": "withdraw", "withdrawalReason": "Duplicate."}, path)
    instance = engine.runtime.get(iid)
    assert instance.state == "completed" and [a["activityId"] for a in instance.active_activities] == []


def test_configuration_update_message_carries_the_change(change_engine):
    engine = change_engine
    iid = start(engine, "change_preapproved", "ann", PREAPPROVED_REQUEST, "SCR-3")
    complete(engine, iid, "implement", "ian", {"outcome": "successful", "implementationNotes": "Patched."}, [])
    with engine.db.connect() as conn:
        rows = conn.execute(text("SELECT message_name, business_key, variables_json FROM buffered_message")).all()
    assert [(r[0], r[1]) for r in rows] == [("configuration_update", "SCR-3")]
    payload = json.loads(rows[0][2])
    assert "policies" not in json.dumps(payload)  # the payload is the change, not the instance's data
    assert "srv-web-01" in json.dumps(payload) and "change_preapproved" in json.dumps(payload)
