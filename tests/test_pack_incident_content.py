"""Content checks of the ISO/IEC 20000 resolution processes (pack iso20000): incident, service_request,
major_incident and problem — BPMN, diagrams, forms, policies, messages and correlation, RACI/SoD
references, the policy scripts, and walks of the main paths on the real engine.

The walks deploy the four BPMN files on a plain engine and give every instance the pack's policy values
the way an applied pack does (also to instances started by a message), so the scripts and timers run as
they will in production; one walk applies a temporary pack made of these four processes to check the
same paths under the pack's own rules (policies, RACI, consultation).
"""

from __future__ import annotations

import copy
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import isodate
import jsonschema
import pytest
import yaml
from lxml import etree
from sqlalchemy import text

from itsmflow.engine.bpmn import parse_deployment
from itsmflow.engine.directory import Directory
from itsmflow.engine.sandbox import check_expression, run_script

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "process_packs" / "iso20000"
BPMN_DIR = ROOT / "bpmn" / "iso20000"
FORMS = ROOT / "forms" / "iso20000"
KEYS = ("incident", "service_request", "major_incident", "problem")
FILES = {key: BPMN_DIR / f"{key}.bpmn" for key in KEYS}
FORM_PREFIXES = ("incident_", "request_", "major_", "problem_")
#: the policies these processes read (preapproved_models belongs to the change processes)
POLICY_NAMES = ("incident_priority", "incident_targets", "major_incident", "escalation", "problem")

from .bpmn_content import CAMUNDA, CONTRACT_ROLES, FLOW_NODES, NS, SIZES, check_gateway

#: messages each process throws and catches, by name (the pack's interfaces)
MESSAGES = {
    "incident": {"throws": {"major_incident_declared", "problem_raised"}, "catches": {"major_incident_resolved"}},
    "major_incident": {"throws": {"major_incident_resolved", "problem_raised", "major_incident_report"},
                       "catches": {"major_incident_declared"}},
    "problem": {"throws": {"rfc_raised"}, "catches": {"problem_raised", "change_outcome"}},
    "service_request": {"throws": {"preapproved_change_requested"}, "catches": set()},
}


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
    """The default values of the policies these processes read, straight from their files."""
    out = {name: yaml.safe_load((PACK / "policies" / f"{name}.yaml").read_text(encoding="utf-8"))
           for name in POLICY_NAMES + ("preapproved_models",)}
    return out


def short_policies() -> dict:
    """Test-only variant: a status update cycle of one second (the defaults are untouched)."""
    policies = load_policies()
    policies["major_incident"]["communication"]["status_update_interval"] = "PT1S"
    return policies


def _form(key):
    return json.loads((FORMS / f"{key}.json").read_text(encoding="utf-8"))


def _my_forms():
    return sorted(p for p in FORMS.glob("*.json")
                  if p.name.startswith(FORM_PREFIXES) and not p.name.endswith(".ui.json"))


# ------------------------------------------------------------------------------------------------
# BPMN and diagrams
# ------------------------------------------------------------------------------------------------

def test_bpmn_parses_without_issues_alone_and_with_the_whole_pack():
    files = [(p.name, p.read_bytes()) for p in FILES.values()]
    parsed = parse_deployment(files, script_validator=check_expression)
    assert sorted(parsed.processes) == sorted(KEYS)
    assert parsed.warnings == [] and parsed.non_executable == []
    # deployed together with the change processes (shared message ids must not clash)
    others = [(p.name, p.read_bytes()) for p in sorted(BPMN_DIR.glob("change_*.bpmn"))]
    together = parse_deployment(files + others, script_validator=check_expression)
    assert set(KEYS) <= set(together.processes)


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
    in_lanes = [ref.text for lane in lanes for ref in lane.findall("bpmn:flowNodeRef", NS)]
    assert sorted(in_lanes) == sorted(n.get("id") for n in _nodes(proc))


@pytest.mark.parametrize("key", KEYS)
def test_gateways_and_their_flows_are_named_and_complete(key):
    proc = _process(key)
    flows = proc.findall(".//bpmn:sequenceFlow", NS)
    for gw in proc.iter("{%s}exclusiveGateway" % NS["bpmn"], "{%s}parallelGateway" % NS["bpmn"],
                        "{%s}eventBasedGateway" % NS["bpmn"]):
        check_gateway(gw, flows)
    for gw in proc.iter("{%s}eventBasedGateway" % NS["bpmn"]):
        targets = [f.get("targetRef") for f in flows if f.get("sourceRef") == gw.get("id")]
        kinds = {etree.QName(proc.find(f".//*[@id='{t}']")).localname for t in targets}
        assert kinds == {"intermediateCatchEvent"}, gw.get("id")


@pytest.mark.parametrize("key", KEYS)
def test_diagram_interchange_is_complete_and_tidy(key):
    root = _tree(key).getroot()
    proc = root.find("bpmn:process", NS)
    plane = root.find("bpmndi:BPMNDiagram/bpmndi:BPMNPlane", NS)
    shapes, expanded = {}, set()
    for s in plane.findall("bpmndi:BPMNShape", NS):
        b = s.find("dc:Bounds", NS)
        shapes[s.get("bpmnElement")] = tuple(float(b.get(a)) for a in ("x", "y", "width", "height"))
        if s.get("isExpanded") == "true":
            expanded.add(s.get("bpmnElement"))
    edges = {e.get("bpmnElement"): e.findall("di:waypoint", NS) for e in plane.findall("bpmndi:BPMNEdge", NS)}
    pool = root.find("bpmn:collaboration/bpmn:participant", NS).get("id")
    lanes = {lane.get("id"): lane for lane in proc.findall("bpmn:laneSet/bpmn:lane", NS)}
    nodes = _nodes(proc)
    subs = {n.get("id") for n in nodes if etree.QName(n).localname == "subProcess"}
    assert subs <= expanded
    assert pool in shapes and set(lanes) <= set(shapes)
    assert {n.get("id") for n in nodes} <= set(shapes)
    for f in proc.iter("{%s}sequenceFlow" % NS["bpmn"]):
        assert len(edges.get(f.get("id"), [])) >= 2, f"sequence flow {f.get('id')} has no edge"

    def inside(inner, outer):
        x, y, w, h = inner
        ox, oy, ow, oh = outer
        return ox <= x and oy <= y and x + w <= ox + ow and y + h <= oy + oh

    def parent_of(n):
        p = n.getparent()
        return p.get("id") if etree.QName(p).localname == "subProcess" else None

    lane_boxes = [shapes[lid] for lid in lanes]
    assert all(inside(b, shapes[pool]) for b in lane_boxes)
    for a, b in zip(lane_boxes, lane_boxes[1:]):
        assert a[1] + a[3] == b[1]
    lane_of = {ref.text: lid for lid, lane in lanes.items() for ref in lane.findall("bpmn:flowNodeRef", NS)}
    for n in nodes:
        box, name = shapes[n.get("id")], etree.QName(n).localname
        if name == "subProcess":
            assert inside(box, shapes[pool]), n.get("id")
            continue
        assert box[2:] == SIZES[_kind(n)], n.get("id")
        if name != "boundaryEvent":
            assert inside(box, shapes[lane_of[n.get("id")]]), n.get("id")
            if parent_of(n):
                assert inside(box, shapes[parent_of(n)]), f"{n.get('id')} is outside its sub-process"
        else:  # a boundary event sits on the border of its host
            hx, hy, hw, hh = shapes[n.get("attachedToRef")]
            cx, cy = box[0] + 18, box[1] + 18
            assert hx <= cx <= hx + hw and cy in (hy, hy + hh), n.get("id")
    plain = [(n.get("id"), shapes[n.get("id")]) for n in nodes
             if etree.QName(n).localname not in ("boundaryEvent", "subProcess")]
    for i, (ida, (x, y, w, h)) in enumerate(plain):
        for idb, (x2, y2, w2, h2) in plain[i + 1:]:
            assert not (x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h), f"{ida} overlaps {idb}"
    # nothing outside a sub-process overlaps it
    for sub in subs:
        sx, sy, sw, sh = shapes[sub]
        members = {n.get("id") for n in proc.find(f".//bpmn:subProcess[@id='{sub}']", NS).iter()
                   if etree.QName(n).localname in FLOW_NODES}
        for nid, (x, y, w, h) in plain:
            if nid not in members:
                assert not (x < sx + sw and sx < x + w and y < sy + sh and sy < y + h), f"{nid} overlaps {sub}"
    for fid, points in edges.items():
        pts = [(float(p.get("x")), float(p.get("y"))) for p in points]
        for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
            assert x1 == x2 or y1 == y2, fid


@pytest.mark.parametrize("key", KEYS)
def test_messages_and_correlation_properties(key):
    root = _tree(key).getroot()
    proc = root.find("bpmn:process", NS)
    messages = {m.get("id"): m.get("name") for m in root.findall("bpmn:message", NS)}
    thrown, caught = set(), set()
    for el in proc.iter():
        med = el.find("bpmn:messageEventDefinition", NS)
        if med is None:
            continue
        name = messages[med.get("messageRef")]
        if etree.QName(el).localname in ("intermediateThrowEvent", "endEvent"):
            thrown.add(name)
            assert med.get(CAMUNDA + "expression"), f"{el.get('id')}: the payload is explicit"
        else:
            caught.add(name)
    assert thrown == MESSAGES[key]["throws"] and caught == MESSAGES[key]["catches"]
    props = {}
    for cp in root.findall("bpmn:correlationProperty", NS):
        props[cp.get("id")] = {messages[e.get("messageRef")]: e.find("bpmn:messagePath", NS).text
                               for e in cp.findall("bpmn:correlationPropertyRetrievalExpression", NS)}
    expected = {
        "incident": {"incidentRef": {"major_incident_resolved": "incidentRef"}},
        "major_incident": {"incidentRef": {"major_incident_resolved": "incidentRef"}},
        "problem": {"problemRef": {"rfc_raised": "problemRef", "change_outcome": "problemRef"}},
        "service_request": {},
    }
    assert props == expected[key]


@pytest.mark.parametrize("key", KEYS)
def test_user_tasks_and_start_events_name_their_forms(key):
    proc = _process(key)
    for el in proc.findall("bpmn:startEvent", NS) + list(proc.iter("{%s}userTask" % NS["bpmn"])):
        fk = el.get(CAMUNDA + "formKey")
        assert fk and fk.startswith(FORM_PREFIXES), f"{key}:{el.get('id')}"
        assert (FORMS / f"{fk}.json").is_file(), fk


# ------------------------------------------------------------------------------------------------
# forms
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", _my_forms(), ids=lambda p: p.stem)
def test_forms_are_valid_closed_schemas(path):
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema.get("title") and schema.get("description")
    assert set(schema.get("required", [])) <= set(schema["properties"])
    for name in schema["properties"]:
        assert name[0].islower() and "_" not in name and "-" not in name, f"{path.stem}: {name} is not camelCase"
    props = schema["properties"]
    validator = jsonschema.Draft202012Validator(schema)
    if "decision" in props:
        assert props["decision"]["enum"] == ["approved", "rejected"] and "reason" in props
        assert list(validator.iter_errors({"decision": "rejected"})), f"{path.stem}: reason not required"
        assert not list(validator.iter_errors({"decision": "rejected", "reason": "no"}))
    if "outcome" in props:
        assert props["outcome"]["enum"] == ["successful", "unsuccessful"]
    if "reviewOutcome" in props:
        assert {"reviewOutcome", "lessonsLearned"} <= set(schema["required"])
    ui = FORMS / f"{path.stem}.ui.json"
    if ui.exists():
        assert set(json.loads(ui.read_text(encoding="utf-8")).get("ui:order", [])) <= set(props)


def test_every_form_is_used_by_a_process():
    used = set()
    for key in KEYS:
        for el in _process(key).iter():
            if el.get(CAMUNDA + "formKey"):
                used.add(el.get(CAMUNDA + "formKey"))
    assert {p.stem for p in _my_forms()} == used


def test_rfc_of_the_fix_decision_is_change_normals_rfc():
    rfc = _form("problem_decide_fix")["properties"]["rfc"]
    change_rfc = _form("change_rfc")
    assert rfc["required"] == change_rfc["required"]
    assert set(rfc["properties"]) == set(change_rfc["properties"]) - {"linkedRecords"}


# ------------------------------------------------------------------------------------------------
# policies, pack manifest, RACI, SoD
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policies_validate_against_their_schemas(name):
    schema = json.loads((PACK / "policies" / f"{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    value = yaml.safe_load((PACK / "policies" / f"{name}.yaml").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(value)
    assert value.get("defaults") is True, f"policy {name} must be marked as pack defaults"


def test_target_times_warn_before_the_breach():
    targets = load_policies()["incident_targets"]["targets"]
    for priority, t in targets.items():
        warn, breach = isodate.parse_duration(t["warn_after"]), isodate.parse_duration(t["resolution"])
        assert warn < breach, priority
        assert isodate.parse_duration(t["response"]) < breach, priority
    boxes = load_policies()["escalation"]["functional"]["first_line_time_box"]
    for priority, box in boxes.items():
        assert isodate.parse_duration(box) < isodate.parse_duration(targets[priority]["warn_after"]), priority
    escalation = load_policies()["escalation"]
    assert escalation["functional"]["default_group"] in {g["id"] for g in escalation["functional"]["resolver_groups"]}
    assert set(escalation["hierarchic"]["on_breach"].values()) <= CONTRACT_ROLES


def test_pack_manifest_lists_the_processes_policies_and_interfaces():
    pack = _pack()
    listed = {p["key"]: p for p in pack["processes"]}
    for key in KEYS:
        assert (PACK / listed[key]["bpmn"]).resolve() == FILES[key].resolve()
    policies = {p["name"]: p for p in pack["policies"]}
    for name in POLICY_NAMES:
        assert (PACK / policies[name]["file"]).resolve() == (PACK / "policies" / f"{name}.yaml").resolve()
        assert (PACK / policies[name]["schema"]).resolve() == (PACK / "policies" / f"{name}.schema.json").resolve()
    interfaces = {(i["message"], i["from"], i["to"]) for i in pack.get("interfaces") or []}
    assert {("major_incident_declared", "incident", "major_incident"),
            ("major_incident_resolved", "major_incident", "incident"),
            ("problem_raised", "major_incident", "problem"),
            ("problem_raised", "incident", "problem")} <= interfaces
    for message, source, target in interfaces:
        if source in KEYS:
            assert message in MESSAGES[source]["throws"]
        if target in KEYS:
            assert message in MESSAGES[target]["catches"]


def test_raci_and_sod_name_existing_tasks_and_roles():
    roles = set(_pack()["roles"])
    raci = yaml.safe_load((PACK / "raci.yaml").read_text(encoding="utf-8"))["processes"]
    for key in KEYS:
        proc = _process(key)
        lanes = {ref.text: lane.get("name") for lane in proc.findall("bpmn:laneSet/bpmn:lane", NS)
                 for ref in lane.findall("bpmn:flowNodeRef", NS)}
        user_tasks = {t.get("id") for t in proc.iter("{%s}userTask" % NS["bpmn"])}
        entries = raci[key]["tasks"]
        assert set(entries) == user_tasks, key
        for task_id, entry in entries.items():
            assert entry["responsible"] == [lanes[task_id]], f"{key}:{task_id} responsible is not its lane"
            named = set(entry["responsible"]) | {entry["accountable"]} | set(entry.get("consulted", [])) | set(
                entry.get("informed", []))
            assert named <= roles, f"{key}:{task_id}"
            assert entry.get("consultation", "required") in ("required", "advisory")
    # only the major incident manager's tasks tell the customer anything during a major incident
    for task_id, entry in raci["major_incident"]["tasks"].items():
        if "customer" in entry.get("informed", []) + entry.get("consulted", []):
            assert entry["responsible"] == ["major-incident-manager"], task_id
    rules = {r["id"]: r for r in yaml.safe_load((PACK / "sod.yaml").read_text(encoding="utf-8"))["rules"]}
    mine = {rid: r for rid, r in rules.items() if r["process"] in KEYS}
    assert {"request-initiator-cannot-authorise-access", "major-incident-review-independent",
            "known-error-acceptance-not-by-proposer", "resolver-cannot-confirm-own-resolution"} <= set(mine)
    for rule in mine.values():
        tasks = {t.get("id") for t in _process(rule["process"]).iter("{%s}userTask" % NS["bpmn"])}
        assert set(rule["tasks"]) <= tasks, rule["id"]
        for other in rule["not_same_as"]:
            assert other == "initiator" or (other.startswith("task:") and other[5:] in tasks), rule["id"]


# ------------------------------------------------------------------------------------------------
# the policy scripts, run in the sandbox
# ------------------------------------------------------------------------------------------------

PRIORITISE_BASE = {"impact": "medium", "urgency": "medium"}


@pytest.mark.parametrize("impact,urgency,override,expected", [
    ("high", "high", None, "P1"),
    ("high", "medium", None, "P2"),
    ("medium", "high", None, "P2"),
    ("medium", "medium", None, "P3"),
    ("low", "high", None, "P3"),
    ("low", "low", None, "P4"),
    ("low", "low", "P2", "P2"),
])
def test_priority_matrix_and_targets(impact, urgency, override, expected):
    data = {"policies": load_policies(), "impact": impact, "urgency": urgency}
    if override:
        data["priorityOverride"] = override
    out = run_script(_script("incident", "prioritise"), data)
    assert out["priority"] == expected
    targets = load_policies()["incident_targets"]["targets"][expected]
    assert (out["warn_after"], out["breach_after"]) == (targets["warn_after"], targets["resolution"])
    assert out["first_line_time_box"] == load_policies()["escalation"]["functional"]["first_line_time_box"][expected]
    assert out["escalations"] == [] and out["support_level"] == 1 and out["problemSuspected"] is False
    assert "override" not in out and "target" not in out


@pytest.mark.parametrize("facts,matched", [
    ({"priority": "P1", "criticalService": True, "usersAffected": 3, "securityRelated": False},
     ["critical_service_down"]),
    ({"priority": "P1", "criticalService": False, "usersAffected": 250, "securityRelated": False}, ["many_users"]),
    ({"priority": "P2", "criticalService": True, "usersAffected": 250, "securityRelated": False}, []),
    ({"priority": "P2", "criticalService": False, "usersAffected": 1, "securityRelated": True}, ["security_breach"]),
    ({"priority": "P3", "criticalService": False, "usersAffected": 1, "securityRelated": False,
      "majorIncidentSuspected": True}, ["manual_declaration"]),
])
def test_major_incident_criteria(facts, matched):
    out = run_script(_script("incident", "check_major"), {"policies": load_policies(), **facts})
    assert out["major_criteria_matched"] == matched
    assert out["major_incident"] is bool(matched)


def test_functional_escalation_uses_known_groups_and_logs_each_hand_off():
    script = _script("incident", "record_functional_escalation")
    base = {"policies": load_policies(), "support_level": 1, "escalations": []}
    timed_out = run_script(script, base)
    assert timed_out["assignedGroup"] == "second-line" and timed_out["support_level"] == 2
    assert timed_out["escalations"][0]["reason"] == "target_missed_or_will_be_missed"
    asked = run_script(script, {**timed_out, "escalateTo": "supplier",
                                "escalationReason": "additional_knowledge_needed"})
    assert asked["assignedGroup"] == "supplier" and len(asked["escalations"]) == 2
    unknown = run_script(script, {**base, "escalateTo": "no-such-group", "escalationReason": "insufficient_resources"})
    assert unknown["assignedGroup"] == "second-line"


@pytest.mark.parametrize("given,expected", [
    ({"problemRef": "PRB-7", "majorIncidentRef": "MI-1"}, "PRB-7"),
    ({"majorIncidentRef": "MI-1", "incidentRef": "INC-1"}, "PRB-MI-1"),
    ({"incidentRef": "INC-1", "priority": "P1"}, "PRB-INC-1"),
    ({}, None),
])
def test_problem_reference_and_periods(given, expected):
    out = run_script(_script("problem", "register_problem"), {"policies": load_policies(), **given})
    assert out["problemRef"] == expected
    priority = "high" if given.get("priority") == "P1" else "medium"
    assert out["problem_priority"] == priority
    assert out["problem_review_after"] == load_policies()["problem"]["review_after"][priority]
    assert out["linkedIncidents"] == (["INC-1"] if "incidentRef" in given else [])


@pytest.mark.parametrize("model,match,reason", [
    ("std-os-security-patch", True, None),
    ("std-filesystem-extension", False, "suspended"),
    ("no-such-model", False, "no pre-approved change model"),
])
def test_service_request_matches_the_preapproved_catalogue(model, match, reason):
    out = run_script(_script("service_request", "register_request"),
                     {"policies": load_policies(), "requestType": "pre_approved_change", "changeModel": model})
    assert out["preapproved_match"] is match
    assert out["fulfilment_due"] == "P5D"
    if reason:
        assert reason in out["preapproved_refusal"]


# ------------------------------------------------------------------------------------------------
# walking the processes on the engine
# ------------------------------------------------------------------------------------------------

USERS = {
    "sam": ["service-desk"], "ivy": ["incident-manager"], "mia": ["major-incident-manager"],
    "mo": ["major-incident-manager"], "pat": ["problem-manager"], "sue": ["service-level-manager"],
    "cus": ["customer"], "sol": ["service-owner"], "root": ["admin"], "olga": ["customer", "service-owner"],
    "vera": ["supplier-specialist"],  # named at a functional escalation; holds no pack role
}


@pytest.fixture
def directory() -> Directory:  # overrides the conftest fixture: people holding the pack's roles
    return Directory.from_dict({"users": [{"id": u, "name": u.title(), "roles": r} for u, r in USERS.items()]})


@pytest.fixture
def pack_engine(engine):
    """The four processes on a plain engine; every instance gets the pack's policy values at start, as an
    applied pack gives them (also instances started by a message). `engine.test_policies` selects the variant."""
    engine.repository.deploy("iso20000 resolution", [(p.name, p.read_bytes()) for p in FILES.values()])
    engine.test_policies = load_policies()
    engine.executor.start_variables.append(
        lambda definition: {"policies": copy.deepcopy(engine.test_policies)} if definition.key in KEYS else {})
    return engine


def _validate(form_key, data, drop=()):
    schema = _form(form_key)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    data = {k: v for k, v in data.items() if k not in drop}
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert not errors, f"{form_key}: {errors}"


def start(engine, key, user, data, business_key, policies=None):
    start_form = _process(key).find("bpmn:startEvent", NS).get(CAMUNDA + "formKey")
    _validate(start_form, data)
    if policies is not None:
        engine.test_policies = policies
    return engine.runtime.start(key, business_key=business_key, variables=dict(data),
                                principal=engine.directory.get(user).principal()).id


def open_keys(engine, instance_id):
    return sorted(t.task_definition_key for t in engine.tasks.query(process_instance_id=instance_id)[0])


def the_task(engine, instance_id, key):
    tasks = [t for t in engine.tasks.query(process_instance_id=instance_id)[0] if t.task_definition_key == key]
    assert len(tasks) == 1, f"expected task {key}, open: {open_keys(engine, instance_id)}"
    return tasks[0]


def complete(engine, instance_id, key, user, data, path=None):
    task = the_task(engine, instance_id, key)
    assert set(task.candidate_roles) == set(USERS[user]), (key, task.candidate_roles)
    _validate(task.form_key, data)
    engine.tasks.complete(task.id, engine.directory.get(user).principal(), data)
    if path is not None:
        path.append(key)


def fire(engine, activity_id):
    """Bring the timer job of `activity_id` due and run the due jobs."""
    with engine.db.begin() as conn:
        moved = conn.execute(text("UPDATE job SET due_at = :t WHERE job_type = 'timer' AND activity_id = :a"),
                             {"t": datetime(2000, 1, 1, tzinfo=timezone.utc), "a": activity_id}).rowcount
    assert moved == 1, f"no single timer job for {activity_id}"
    return engine.jobs.run_due()


def task_variables(engine, instance_id, key):
    return engine.tasks.variables(the_task(engine, instance_id, key).id)


def timer_jobs(engine):
    with engine.db.connect() as conn:
        return sorted(r[0] for r in conn.execute(text("SELECT activity_id FROM job WHERE job_type = 'timer'")))


def buffered(engine, name):
    with engine.db.connect() as conn:
        rows = conn.execute(text("SELECT variables_json, correlation_json FROM buffered_message "
                                 "WHERE message_name = :n"), {"n": name}).all()
    return [(json.loads(r[0]), json.loads(r[1]) if r[1] else None) for r in rows]


def instances(engine, key):
    return engine.runtime.list(definition_key=key)[0]


INCIDENT = {
    "incidentRef": "INC-1",
    "summary": "Payroll application shows an error on login",
    "description": "Since 08:10 users get 'session expired' right after signing in.",
    "reportedVia": "phone",
    "reportedBy": "Pia Payroll",
    "affectedService": "payroll",
}
CLASSIFY = {"category": "application", "impact": "medium", "urgency": "medium", "usersAffected": 12,
            "criticalService": False, "securityRelated": False}


def test_incident_resolved_at_first_line_and_confirmed(pack_engine):
    engine, path = pack_engine, []
    iid = start(engine, "incident", "sam", INCIDENT, "INC-1")
    complete(engine, iid, "classify", "sam", CLASSIFY, path)
    variables = engine.runtime.get(iid).variables
    assert (variables["priority"], variables["warn_after"], variables["breach_after"]) == ("P3", "P2DT6H", "P3D")
    assert variables["major_incident"] is False
    assert timer_jobs(engine) == ["first_line_time_box", "target_breached", "target_warning"]
    assert the_task(engine, iid, "resolve_first_line").due is not None  # the first-line time box
    complete(engine, iid, "resolve_first_line", "sam", {
        "knownErrorChecked": True, "knownErrorMatch": "match_found", "knownErrorRef": "KE-12",
        "workaroundApplied": True, "resolutionResult": "resolved",
        "resolutionSummary": "Cleared the stale session cache (workaround of KE-12)."}, path)
    assert timer_jobs(engine) == ["auto_close"]  # the target timers ended with the resolution work
    complete(engine, iid, "confirm", "cus", {"userConfirmation": "confirmed", "satisfaction": 5}, path)
    complete(engine, iid, "close", "sam", {"closureCode": "resolved_with_workaround", "categoryCorrect": True,
                                           "recordComplete": True, "problemSuspected": False}, path)
    instance = engine.runtime.get(iid)
    assert instance.state == "completed", instance.incidents
    assert path == ["classify", "resolve_first_line", "confirm", "close"]
    assert instance.variables["knownErrorRef"] == "KE-12"
    assert not any(e.type == "message_thrown" for e in engine.history.events(iid))


def test_p1_incident_warns_before_the_breach_and_escalates_while_work_goes_on(pack_engine):
    engine, path = pack_engine, []
    iid = start(engine, "incident", "sam", {**INCIDENT, "incidentRef": "INC-2"}, "INC-2")
    complete(engine, iid, "classify", "sam", {**CLASSIFY, "impact": "high", "urgency": "high"}, path)
    assert engine.runtime.get(iid).variables["priority"] == "P1"
    assert engine.runtime.get(iid).variables["major_incident"] is False  # P1, but no criterion met
    # the warning fires before the target: the incident manager acts, the resolution work stays open
    assert fire(engine, "target_warning") == 1
    assert open_keys(engine, iid) == ["escalate_warning", "resolve_first_line"]
    complete(engine, iid, "escalate_warning", "ivy", {"actionsTaken": ["added_specialists", "informed_user"],
                                                      "notes": "Asked the payroll vendor's on-call engineer."}, path)
    # the first-line time box runs out: functional escalation to the default resolver group
    assert fire(engine, "first_line_time_box") == 1
    assert open_keys(engine, iid) == ["resolve_second_line"]
    variables = task_variables(engine, iid, "resolve_second_line")  # the waiting timers hold older copies
    assert variables["assignedGroup"] == "second-line" and variables["support_level"] == 2
    assert variables["escalations"][0]["reason"] == "target_missed_or_will_be_missed"
    complete(engine, iid, "resolve_second_line", "ivy", {
        "actionsTaken": "Checked the identity provider logs.", "resolutionResult": "reassign",
        "escalationReason": "additional_knowledge_needed", "escalateTo": "supplier",
        "assignedSpecialists": ["vera"]}, path)
    task = the_task(engine, iid, "resolve_second_line")
    assert "vera" in task.candidate_users  # the specialist named at the escalation is offered the work
    assert task_variables(engine, iid, "resolve_second_line")["assignedGroup"] == "supplier"
    # the target is breached: hierarchic escalation, the work still goes on
    assert fire(engine, "target_breached") == 1
    assert open_keys(engine, iid) == ["escalate_breach", "resolve_second_line"]
    assert engine.runtime.get(iid).variables["breach_escalation_to"] == "service-owner"
    complete(engine, iid, "escalate_breach", "ivy", {"escalatedTo": "service-owner",
                                                     "escalationReason": "target_missed_or_will_be_missed",
                                                     "customerInformed": True}, path)
    complete(engine, iid, "resolve_second_line", "ivy", {
        "actionsTaken": "Vendor patched the token service.", "resolutionResult": "resolved",
        "resolutionSummary": "Token service patched by the vendor.", "problemSuspected": True}, path)
    # the user does not answer: closed automatically, and a problem record is raised
    assert fire(engine, "auto_close") == 1
    instance = engine.runtime.get(iid)
    assert instance.state == "completed", instance.incidents
    assert instance.variables["closureCode"] == "resolved_auto_closed"
    assert len(instance.variables["escalations"]) == 2
    assert path == ["classify", "escalate_warning", "resolve_second_line", "escalate_breach", "resolve_second_line"]
    problems = instances(engine, "problem")
    assert len(problems) == 1 and problems[0].variables["problemRef"] == "PRB-INC-2"
    assert problems[0].variables["linkedIncidents"] == ["INC-2"]
    assert problems[0].variables["problem_priority"] == "high"


def test_incident_reopened_when_the_user_says_it_is_not_resolved(pack_engine):
    engine = pack_engine
    iid = start(engine, "incident", "sam", {**INCIDENT, "incidentRef": "INC-5"}, "INC-5")
    complete(engine, iid, "classify", "sam", CLASSIFY)
    resolved = {"knownErrorChecked": True, "knownErrorMatch": "no_match", "resolutionResult": "resolved",
                "resolutionSummary": "Restarted the client."}
    complete(engine, iid, "resolve_first_line", "sam", resolved)
    complete(engine, iid, "confirm", "cus", {"userConfirmation": "not_resolved", "comment": "Same error again."})
    assert open_keys(engine, iid) == ["resolve_first_line"]
    assert timer_jobs(engine) == ["first_line_time_box", "target_breached", "target_warning"]
    complete(engine, iid, "resolve_first_line", "sam", resolved)
    complete(engine, iid, "confirm", "cus", {"userConfirmation": "confirmed"})
    complete(engine, iid, "close", "sam", {"closureCode": "resolved", "categoryCorrect": True,
                                           "recordComplete": True, "problemSuspected": False})
    assert engine.runtime.get(iid).state == "completed"


MAJOR_CLASSIFY = {**CLASSIFY, "impact": "high", "urgency": "high", "usersAffected": 900, "criticalService": True}


def walk_major_incident(engine, mid, path, *, hand_over=True):
    """take charge → (status update) → optional handover → recovery → service restored → review."""
    complete(engine, mid, "take_charge", "mia", {
        "majorIncidentManager": "mia", "impactStatement": "Nobody can sign in to payroll on pay day.",
        "servicesAffected": ["payroll"], "workstreams": [{"team": "identity", "lead": "ivy"},
                                                          {"team": "payroll vendor", "lead": "sol"}],
        "notificationsSent": True, "notifiedParties": ["customer", "top_management", "service_desk"]}, path)
    assert open_keys(engine, mid) == ["lead_and_communicate", "technical_recovery"]
    assert the_task(engine, mid, "lead_and_communicate").assignee == "mia"
    if hand_over:
        complete(engine, mid, "lead_and_communicate", "mia", {
            "coordinationAction": "hand_over", "newManager": "mo", "handoverNotes": "Vendor bridge open; next "
            "update 11:00.", "handoverCommunicatedTo": ["managers", "staff", "customer"]}, path)
        assert the_task(engine, mid, "lead_and_communicate").assignee == "mo"
    manager = "mo" if hand_over else "mia"
    complete(engine, mid, "technical_recovery", "ivy", {"restorationSummary": "Token service restarted.",
                                                         "restoredAt": "2030-01-31T10:40:00Z"}, path)
    complete(engine, mid, "lead_and_communicate", manager, {
        "coordinationAction": "service_restored", "customerConfirmedRestoration": True,
        "finalCommunication": "Payroll is available again; root cause follows."}, path)
    complete(engine, mid, "review", "ivy", {"reviewOutcome": "improvements_needed",
                                            "lessonsLearned": "Open the vendor bridge at declaration.",
                                            "reviewChair": "Ivy"}, path)


def test_incident_declares_a_major_incident_and_closes_when_it_is_resolved(pack_engine):
    engine, path = pack_engine, []
    iid = start(engine, "incident", "sam", {**INCIDENT, "incidentRef": "INC-3"}, "INC-3", policies=short_policies())
    complete(engine, iid, "classify", "sam", MAJOR_CLASSIFY)
    incident = engine.runtime.get(iid)
    assert incident.variables["major_criteria_matched"] == ["critical_service_down", "many_users"]
    assert [a["activityId"] for a in incident.active_activities] == ["catch_major_resolved"]
    majors = instances(engine, "major_incident")
    assert len(majors) == 1
    mid = majors[0].id
    variables = engine.runtime.get(mid).variables
    assert (variables["incidentRef"], variables["majorIncidentRef"]) == ("INC-3", "MI-INC-3")
    assert variables["status_update_cycle"] == "R/PT1S" and variables["priority"] == "P1"
    _validate("major_declared", {k: v for k, v in variables.items()
                                 if k in _form("major_declared")["properties"]})
    complete(engine, mid, "take_charge", "mia", {
        "majorIncidentManager": "mia", "impactStatement": "Nobody can sign in to payroll on pay day.",
        "servicesAffected": ["payroll"], "workstreams": [{"team": "identity", "lead": "ivy"}],
        "notificationsSent": True}, path)
    # the communication cadence: a status update task for the manager every interval
    time.sleep(1.2)
    assert engine.jobs.run_due() >= 1
    assert the_task(engine, mid, "status_update").assignee == "mia"
    complete(engine, mid, "status_update", "mia", {"audience": ["customer", "top_management"], "channel": "email",
                                                   "message": "Sign-in fails; identity team on it; next update in "
                                                              "30 minutes."}, path)
    complete(engine, mid, "lead_and_communicate", "mia", {
        "coordinationAction": "hand_over", "newManager": "mo", "handoverNotes": "Identity team restarting the "
        "token service.", "handoverCommunicatedTo": ["managers", "customer"]}, path)
    assert the_task(engine, mid, "lead_and_communicate").assignee == "mo"
    complete(engine, mid, "technical_recovery", "ivy", {"restorationSummary": "Token service restarted.",
                                                         "restoredAt": "2030-01-31T10:40:00Z"}, path)
    assert engine.runtime.get(iid).state == "active"  # not before the manager confirms restoration
    complete(engine, mid, "lead_and_communicate", "mo", {
        "coordinationAction": "service_restored", "customerConfirmedRestoration": True,
        "finalCommunication": "Payroll is available again."}, path)
    # the resolution went back to the incident (correlated by incidentRef), which closed
    incident = engine.runtime.get(iid)
    assert incident.state == "completed", incident.incidents
    assert incident.variables["closureCode"] == "resolved_by_major_incident"
    assert incident.variables["majorIncidentRef"] == "MI-INC-3"
    assert incident.variables["resolutionSummary"] == "Token service restarted."
    complete(engine, mid, "review", "ivy", {"reviewOutcome": "improvements_needed",
                                            "lessonsLearned": "Open the vendor bridge at declaration.",
                                            "reviewChair": "Ivy"}, path)
    major = engine.runtime.get(mid)
    assert major.state == "completed", major.incidents
    assert [(h["from"], h["to"]) for h in major.variables["managerHistory"]] == [("mia", "mo")]
    assert path == ["take_charge", "status_update", "lead_and_communicate", "technical_recovery",
                    "lead_and_communicate", "review"]
    # a problem record was raised, and the report is waiting for service reporting
    problems = instances(engine, "problem")
    assert [p.variables["problemRef"] for p in problems] == ["PRB-MI-INC-3"]
    reports = buffered(engine, "major_incident_report")
    assert len(reports) == 1 and reports[0][0]["majorIncidentRef"] == "MI-INC-3"
    assert reports[0][0]["reviewOutcome"] == "improvements_needed"
    raised = [e for e in engine.history.events(problems[0].id) if e.type == "message_received"]
    _validate("problem_raised", raised[0].data["variables"])


def test_major_incident_raises_a_problem_whose_fix_goes_through_change(pack_engine):
    engine, path = pack_engine, []
    # declared from outside (monitoring), without an incident
    result = engine.messages.correlate("major_incident_declared", variables={
        "majorIncidentRef": "MI-77", "summary": "Data centre network core down", "priority": "P1"})
    assert len(result.started) == 1
    mid = result.started[0]
    walk_major_incident(engine, mid, path, hand_over=False)
    assert engine.runtime.get(mid).state == "completed"
    events = [e.data.get("name") for e in engine.history.events(mid) if e.type == "message_thrown"]
    assert events == ["problem_raised", "major_incident_report"]  # no incident to tell
    problems = instances(engine, "problem")
    assert len(problems) == 1
    pid = problems[0].id
    assert problems[0].variables["problemRef"] == "PRB-MI-77"
    complete(engine, pid, "investigate", "pat", {
        "impactTechnical": "Core switch stack failed over badly.", "impactBusiness": "All services down 40 min.",
        "rcaTechnique": "kepner_tregoe", "investigationNotes": "Firmware bug in the stacking protocol.",
        "recentChangesReviewed": True, "rootCauseFound": True, "rootCause": "Firmware 9.1 stacking bug",
        "workaroundFound": True, "workaround": "Fail over by hand during maintenance."}, path)
    complete(engine, pid, "record_known_error", "pat", {
        "knownErrorRef": "KE-301", "rootCause": "Firmware 9.1 stacking bug",
        "workaround": {"description": "Fail over by hand during maintenance."}, "workaroundPublished": True,
        "affectedServices": ["network"]}, path)
    rfc = {"summary": "Upgrade core switch firmware to 9.3", "description": "Rolling upgrade of the stack.",
           "purpose": "Removes the root cause of MI-77.", "affectedServices": ["network"],
           "affectedCis": [{"ciId": "core-sw-1", "ciType": "network_device"}],
           "impactedCustomers": ["All"], "requestedPriority": "high", "initialRisk": "medium",
           "impactDescription": "Short loss of redundancy per member.", "estimatedCost": 2000,
           "backOutPlan": {"approach": "reverse", "steps": "Boot the previous image."}}
    complete(engine, pid, "decide_fix", "pat", {"fixDecision": "raise_rfc", "rfc": rfc}, path)
    # the RFC is thrown (nothing catches it yet, so the engine buffers it) and the problem waits
    rfcs = buffered(engine, "rfc_raised")
    assert len(rfcs) == 1
    with engine.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM buffered_message WHERE message_name='rfc_raised'")).scalar() == 1
    payload, correlation = rfcs[0]
    assert correlation == {"problemRef": "PRB-MI-77"}
    assert payload["problemRef"] == "PRB-MI-77"
    assert payload["linkedRecords"] == {"problems": ["PRB-MI-77"], "knownErrors": ["KE-301"], "incidents": []}
    _validate("change_rfc", payload, drop=("problemRef",))  # what change_normal's start form asks for
    problem = engine.runtime.get(pid)
    assert [a["activityId"] for a in problem.active_activities] == ["gw_wait_change"]
    # the change takes long: the problem manager follows it up, and the wait goes on
    assert fire(engine, "fix_overdue") == 1
    complete(engine, pid, "chase_change", "pat", {"changeRef": "RFC-88", "changeStatus": "scheduled",
                                                  "followUpNotes": "Scheduled for Saturday."}, path)
    assert [a["activityId"] for a in engine.runtime.get(pid).active_activities] == ["gw_wait_change"]
    # the change reports its outcome, correlated by problemRef
    result = engine.messages.correlate("change_outcome", correlation_keys={"problemRef": "PRB-MI-77"},
                                       variables={"changeOutcome": "successful", "changeRef": "RFC-88"})
    assert [c["processInstanceId"] for c in result.correlated] == [pid]
    assert open_keys(engine, pid) == ["verify_fix"]  # closed only once the fix is confirmed
    assert the_task(engine, pid, "verify_fix").due is not None  # after the observation period
    complete(engine, pid, "verify_fix", "pat", {"fixEffective": True, "recurrencesSinceFix": 0,
                                                "reviewOutcome": "root_cause_removed",
                                                "lessonsLearned": "Track vendor firmware advisories."}, path)
    problem = engine.runtime.get(pid)
    assert problem.state == "completed", problem.incidents
    assert path[-5:] == ["investigate", "record_known_error", "decide_fix", "chase_change", "verify_fix"]


def test_problem_known_error_accepted_after_review_and_a_failed_change(pack_engine):
    engine, path = pack_engine, []
    # raised proactively (trend analysis) through the messages API
    result = engine.messages.correlate("problem_raised", variables={
        "problemSource": "proactive", "problemRef": "PRB-9", "summary": "Printers drop off the network weekly",
        "linkedIncidents": ["INC-11", "INC-17", "INC-23"]})
    pid = result.started[0]
    assert engine.runtime.get(pid).variables["problemRef"] == "PRB-9"
    investigate = {"impactTechnical": "Print queues stall.", "impactBusiness": "Delays in shipping labels.",
                   "rcaTechnique": "ishikawa", "investigationNotes": "No pattern yet.", "rootCauseFound": False,
                   "workaroundFound": False}
    complete(engine, pid, "investigate", "pat", investigate, path)
    assert open_keys(engine, pid) == ["investigate"]  # keep investigating
    # open too long: a problem review, while the investigation goes on
    assert fire(engine, "review_due") == 1
    assert open_keys(engine, pid) == ["investigate", "problem_review"]
    complete(engine, pid, "problem_review", "pat", {"reviewOutcome": "involve_supplier",
                                                    "lessonsLearned": "Get the printer vendor in earlier."}, path)
    complete(engine, pid, "investigate", "pat", {**investigate, "investigationNotes": "Vendor confirms a DHCP "
                                                 "lease bug.", "rootCauseFound": True,
                                                 "rootCause": "DHCP lease renewal bug in printer firmware"}, path)
    complete(engine, pid, "record_known_error", "pat", {"knownErrorRef": "KE-9",
                                                        "rootCause": "DHCP lease renewal bug",
                                                        "workaroundPublished": False,
                                                        "affectedServices": ["printing"]}, path)
    rfc = {"summary": "Printer firmware 4.2", "description": "Upgrade all printers.", "purpose": "Fix KE-9.",
           "affectedServices": ["printing"], "affectedCis": [{"ciId": "printers"}], "impactedCustomers": ["Logistics"],
           "requestedPriority": "low", "initialRisk": "low", "impactDescription": "Printers reboot once.",
           "estimatedCost": 300, "backOutPlan": {"approach": "reverse", "steps": "Downgrade."}}
    complete(engine, pid, "decide_fix", "pat", {"fixDecision": "raise_rfc", "rfc": rfc}, path)
    engine.messages.correlate("change_outcome", correlation_keys={"problemRef": "PRB-9"},
                              variables={"changeOutcome": "unsuccessful", "changeRef": "RFC-90"})
    assert open_keys(engine, pid) == ["decide_fix"]  # a failed change comes back to the fix decision
    keep = {"fixDecision": "accept_known_error", "acceptanceRationale": "Printers are replaced next quarter.",
            "estimatedCostOfFix": 12000, "riskOfKeeping": "low", "advantages": "No spend on old printers.",
            "disadvantages": "Weekly manual restart."}
    complete(engine, pid, "decide_fix", "pat", keep, path)
    complete(engine, pid, "agree_acceptance", "sue", {"decision": "rejected",
                                                      "reason": "Customer wants a date for the replacement."}, path)
    complete(engine, pid, "decide_fix", "pat", {**keep, "acceptanceRationale": "Replacement on 2030-04-01."},
             path)
    complete(engine, pid, "agree_acceptance", "sue", {"decision": "approved",
                                                      "customerAgreementRef": "SLA review 2030-02"}, path)
    problem = engine.runtime.get(pid)
    assert problem.state == "completed", problem.incidents
    assert problem.variables["known_error_status"] == "accepted"
    assert problem.variables["reevaluate_after"] == "P180D"
    assert [a for a in path if a in ("decide_fix", "agree_acceptance")] == [
        "decide_fix", "decide_fix", "agree_acceptance", "decide_fix", "agree_acceptance"]
    assert len(buffered(engine, "rfc_raised")) == 1


REQUEST = {"requestRef": "REQ-1", "requestType": "pre_approved_change", "summary": "Patch srv-web-01",
           "description": "Apply the March security patch.", "service": "web shop",
           "changeModel": "std-os-security-patch", "affectedCis": [{"ciId": "srv-web-01", "ciType": "server"}],
           "risk": "low"}


def test_service_request_for_a_preapproved_change(pack_engine):
    engine, path = pack_engine, []
    rid = start(engine, "service_request", "cus", REQUEST, "REQ-1")
    assert engine.runtime.get(rid).variables["preapproved_match"] is True
    sent = buffered(engine, "preapproved_change_requested")  # change_preapproved has no message start yet
    assert len(sent) == 1
    payload = sent[0][0]
    assert payload["requestRef"] == "REQ-1"
    _validate("change_preapproved_request", payload, drop=("requestRef",))
    assert the_task(engine, rid, "fulfil").due is not None
    complete(engine, rid, "fulfil", "sam", {"fulfilmentResult": "fulfilled", "fulfilmentNotes": "Patched.",
                                            "changeReference": "SCR-5", "changeOutcome": "successful"}, path)
    complete(engine, rid, "confirm", "cus", {"userConfirmation": "not_fulfilled", "comment": "Still old version."},
             path)
    complete(engine, rid, "fulfil", "sam", {"fulfilmentResult": "fulfilled", "fulfilmentNotes": "Rebooted."}, path)
    complete(engine, rid, "confirm", "cus", {"userConfirmation": "confirmed"}, path)
    instance = engine.runtime.get(rid)
    assert instance.state == "completed" and instance.variables["closureCode"] == "fulfilled_confirmed"
    assert path == ["fulfil", "confirm", "fulfil", "confirm"]


def test_service_request_for_access_rejected_or_auto_closed(pack_engine):
    engine = pack_engine
    access = {"requestRef": "REQ-2", "requestType": "access", "summary": "Access to the payroll reports",
              "description": "Read access for the new controller.", "service": "payroll",
              "accessTo": "payroll reports", "accessLevel": "read", "justification": "Month-end checks."}
    rid = start(engine, "service_request", "cus", access, "REQ-2")
    complete(engine, rid, "authorise_access", "sol", {"decision": "rejected", "reason": "Ask the CFO first."})
    instance = engine.runtime.get(rid)
    assert instance.state == "completed" and open_keys(engine, rid) == []
    assert [a["activityId"] for a in instance.active_activities] == []
    rid = start(engine, "service_request", "cus", {**access, "requestRef": "REQ-3"}, "REQ-3")
    complete(engine, rid, "authorise_access", "sol", {"decision": "approved", "validUntil": "2030-12-31T00:00:00Z"})
    complete(engine, rid, "fulfil", "sam", {"fulfilmentResult": "fulfilled", "fulfilmentNotes": "Role granted."})
    assert fire(engine, "auto_close") == 1
    instance = engine.runtime.get(rid)
    assert instance.state == "completed" and instance.variables["closureCode"] == "fulfilled_no_response"
    info = start(engine, "service_request", "cus", {"requestRef": "REQ-4", "requestType": "information",
                                                    "summary": "Opening hours of the help desk",
                                                    "description": "During holidays?", "service": "service desk"},
                 "REQ-4")
    assert open_keys(engine, info) == ["fulfil"]
    assert buffered(engine, "preapproved_change_requested") == []


# ------------------------------------------------------------------------------------------------
# the same paths under the pack's own rules (policies, RACI, consultation, segregation of duties)
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def applied_engine(engine, tmp_path):
    """A pack made of these four processes (with their pack.yaml, raci.yaml and sod.yaml entries),
    applied on a plain engine: policies come from the pack, RACI and SoD are enforced."""
    pack = _pack()
    processes = [dict(p, bpmn=str((PACK / p["bpmn"]).resolve())) for p in pack["processes"] if p["key"] in KEYS]
    policies = [dict(p, file=str((PACK / p["file"]).resolve()), schema=str((PACK / p["schema"]).resolve()))
                for p in pack["policies"] if p["name"] in POLICY_NAMES + ("preapproved_models",)]
    raci = yaml.safe_load((PACK / "raci.yaml").read_text(encoding="utf-8"))["processes"]
    sod = yaml.safe_load((PACK / "sod.yaml").read_text(encoding="utf-8"))["rules"]
    manifest = {
        "name": "iso20000-resolution", "version": "test", "roles": pack["roles"], "processes": processes,
        "forms": str(FORMS.resolve()), "raci": "raci.yaml", "sod": "sod.yaml", "policies": policies,
        "interfaces": [i for i in pack.get("interfaces") or [] if i["from"] in KEYS and i["to"] in KEYS],
    }
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "pack.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    (tmp_path / "pack" / "raci.yaml").write_text(
        yaml.safe_dump({"processes": {k: v for k, v in raci.items() if k in KEYS}}), encoding="utf-8")
    (tmp_path / "pack" / "sod.yaml").write_text(
        yaml.safe_dump({"rules": [r for r in sod if r["process"] in KEYS]}), encoding="utf-8")
    result = engine.packs.apply(tmp_path / "pack")
    assert sorted(d.key for d in result.definitions) == sorted(KEYS)
    return engine


def test_under_the_pack_rules_policies_reach_message_started_instances(applied_engine):
    from itsmflow.engine.errors import Conflict, Forbidden

    engine = applied_engine
    principal = engine.directory.get("sam").principal()
    iid = engine.runtime.start("incident", business_key="INC-40", principal=principal,
                               variables={**INCIDENT, "incidentRef": "INC-40"}).id
    assert engine.runtime.get(iid).variables["policies"]["incident_priority"]["matrix"]["high"]["high"] == "P1"
    complete(engine, iid, "classify", "sam", MAJOR_CLASSIFY)
    mid = instances(engine, "major_incident")[0].id
    variables = engine.runtime.get(mid).variables
    assert variables["status_update_cycle"] == "R/PT30M"  # the pack's policy, given to the message-started instance
    path = []
    complete(engine, mid, "take_charge", "mia", {
        "majorIncidentManager": "mia", "impactStatement": "Payroll down.", "servicesAffected": ["payroll"],
        "workstreams": [{"team": "identity", "lead": "ivy"}], "notificationsSent": True}, path)
    complete(engine, mid, "technical_recovery", "ivy", {"restorationSummary": "Restarted.",
                                                         "restoredAt": "2030-01-31T10:40:00Z"}, path)
    complete(engine, mid, "lead_and_communicate", "mia", {
        "coordinationAction": "service_restored", "customerConfirmedRestoration": True,
        "finalCommunication": "Payroll is back."}, path)
    assert engine.runtime.get(iid).state == "completed"
    review = the_task(engine, mid, "review")
    done = {"reviewOutcome": "managed_well", "lessonsLearned": "None.", "reviewChair": "Ivy"}
    with pytest.raises(Conflict):  # the major incident manager must be heard first (RACI consultation)
        engine.tasks.complete(review.id, engine.directory.get("ivy").principal(), done)
    engine.consultations.record(review.id, engine.directory.get("mia").principal(), "Communication went well.")
    engine.consultations.record(review.id, engine.directory.get("sue").principal(), "Customer satisfied.")
    engine.tasks.complete(review.id, engine.directory.get("ivy").principal(), done)
    assert engine.runtime.get(mid).state == "completed"
    problem = instances(engine, "problem")[0]
    assert problem.variables["policies"]["problem"]["fix_follow_up_after"] == "P14D"
    # segregation of duties: who asks for access does not authorise it
    olga = engine.directory.get("olga").principal()
    rid = engine.runtime.start("service_request", business_key="REQ-40", principal=olga, variables={
        "requestRef": "REQ-40", "requestType": "access", "summary": "Access to reports", "description": "Read.",
        "service": "payroll", "accessTo": "reports", "accessLevel": "read", "justification": "Audit."}).id
    task = the_task(engine, rid, "authorise_access")
    with pytest.raises(Forbidden) as refused:
        engine.tasks.complete(task.id, olga, {"decision": "approved"})
    assert "request-initiator-cannot-authorise-access" in str(refused.value)
    engine.tasks.complete(task.id, engine.directory.get("sol").principal(), {"decision": "approved"})
    assert open_keys(engine, rid) == ["fulfil"]
