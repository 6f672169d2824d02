"""Content checks of the ISO/IEC 20000 release and deployment process (pack iso20000, process
``release_deployment``): BPMN, diagram, forms, policies (release policy and Table 21 stage roles), the
policy scripts, RACI/SoD references, and walks of the process on the real engine service layer.

Messages with change management: the release throws ``release_rfc_requested`` and waits for
``release_change_approved`` (correlation property ``releaseRef``); change_normal does not send it yet, so
the walks deliver it with ``engine.messages.correlate``. See docs/traceability-release.md.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest
import yaml
from lxml import etree
from sqlalchemy import text

from itsmflow.engine.bpmn import parse_deployment
from itsmflow.engine.directory import Directory
from itsmflow.engine.errors import Forbidden, NotFound
from itsmflow.engine.sandbox import check_expression, run_script

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "process_packs" / "iso20000"
POLICIES = PACK / "policies"
FORMS = ROOT / "forms" / "iso20000"
KEY = "release_deployment"
FILE = ROOT / "bpmn" / "iso20000" / f"{KEY}.bpmn"

from .bpmn_content import CAMUNDA, CONTRACT_ROLES, FLOW_NODES, NS, SIZES, check_gateway

#: the stage gates: task id -> (variable in camunda:candidateGroups, stage whose roles it uses)
GATES = {
    "build_release": ("release_from_roles", "pre_acceptance_test"),
    "accept_pre_acceptance": ("accept_into_roles", "pre_acceptance_test"),
    "release_from_pre_acceptance": ("release_from_roles", "acceptance_test"),
    "accept_acceptance": ("accept_into_roles", "acceptance_test"),
    "accept_emergency": ("accept_into_roles", "acceptance_test"),
    "release_into_pilot": ("release_from_roles", "pilot"),
    "accept_into_pilot": ("accept_into_roles", "pilot"),
    "release_into_live": ("release_from_roles", "live"),
    "accept_into_live": ("accept_into_roles", "live"),
}
MESSAGES = {"release_rfc_requested", "release_change_approved", "configuration_update", "release_outcome"}


def _tree():
    return etree.parse(str(FILE))


def _process():
    return _tree().getroot().find("bpmn:process", NS)


def _nodes(proc):
    return [el for el in proc.iter() if etree.QName(el).localname in FLOW_NODES]


def _kind(el):
    name = etree.QName(el).localname
    if name.endswith("Event"):
        return "event"
    if name.endswith("Gateway"):
        return "gateway"
    return "task"


def _script(element_id):
    el = _process().find(f".//bpmn:scriptTask[@id='{element_id}']", NS)
    return el.find("bpmn:script", NS).text


def _pack():
    return yaml.safe_load((PACK / "pack.yaml").read_text(encoding="utf-8"))


def _yaml(path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_policies() -> dict:
    """Every policy of the pack, as the engine gives them to an instance (variable ``policies``)."""
    return {p["name"]: _yaml(PACK / p["file"]) for p in _pack()["policies"]}


def release_policies() -> dict:
    return {name: _yaml(POLICIES / f"{name}.yaml") for name in ("release_policy", "release_stage_roles")}


def _form(key):
    return json.loads((FORMS / f"{key}.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# BPMN and diagram
# ------------------------------------------------------------------------------------------------

def test_release_bpmn_parses_without_issues():
    parsed = parse_deployment([(FILE.name, FILE.read_bytes())], script_validator=check_expression)
    assert sorted(parsed.processes) == [KEY]
    assert parsed.warnings == []
    assert parsed.non_executable == []


def test_one_pool_with_a_lane_per_contract_role():
    root = _tree().getroot()
    proc = root.find("bpmn:process", NS)
    assert proc.get("id") == KEY and proc.get("isExecutable") == "true"
    participants = root.findall("bpmn:collaboration/bpmn:participant", NS)
    assert [p.get("processRef") for p in participants] == [KEY]
    lanes = proc.findall("bpmn:laneSet/bpmn:lane", NS)
    names = [lane.get("name") for lane in lanes]
    assert names == ["release-manager", "customer", "change-builder", "configuration-manager", "test-manager",
                     "independent-tester", "deployment-manager", "service-owner"]
    assert set(names) <= CONTRACT_ROLES
    in_lanes = [ref.text for lane in lanes for ref in lane.findall("bpmn:flowNodeRef", NS)]
    assert sorted(in_lanes) == sorted(n.get("id") for n in _nodes(proc))


def test_gateways_and_their_flows_are_named_and_complete():
    proc = _process()
    flows = proc.findall("bpmn:sequenceFlow", NS)
    gateways = proc.findall("bpmn:exclusiveGateway", NS)
    assert gateways
    for gw in gateways:
        check_gateway(gw, flows)


def test_every_gate_is_followed_by_accept_stop_and_back_to_build():
    proc = _process()
    flows = proc.findall("bpmn:sequenceFlow", NS)
    after = {f.get("sourceRef"): f.get("targetRef") for f in flows}
    for gate in GATES:
        if gate == "build_release":
            continue
        target = after[gate]
        if gate == "accept_emergency":  # the deferred checks are recorded first
            assert target == "record_emergency_acceptance"
            target = after[target]
        gw = proc.find(f"bpmn:exclusiveGateway[@id='{target}']", NS)
        assert gw is not None, gate
        outs = {f.get("targetRef"): f for f in flows if f.get("sourceRef") == target}
        assert {"stop_release", "return_to_build"} <= set(outs), gate
        assert gw.get("default") == outs["return_to_build"].get("id"), gate
        stop = outs["stop_release"].find("bpmn:conditionExpression", NS).text
        assert stop == "decision == 'rejected' and failAction == 'stop'"


def test_gates_take_their_candidates_from_the_stage_role_variables():
    proc = _process()
    user_tasks = {t.get("id"): t for t in proc.findall("bpmn:userTask", NS)}
    dynamic = {k: t.get(CAMUNDA + "candidateGroups") for k, t in user_tasks.items()
               if t.get(CAMUNDA + "candidateGroups")}
    assert dynamic == {gate: "${%s}" % var for gate, (var, _stage) in GATES.items()}
    # each gate is reached through the script that sets the roles of its stage
    flows = proc.findall("bpmn:sequenceFlow", NS)
    into = {}
    for f in flows:
        into.setdefault(f.get("targetRef"), set()).add(f.get("sourceRef"))
    scripts = {s.get("id"): s.find("bpmn:script", NS).text for s in proc.findall("bpmn:scriptTask", NS)}
    stage_of_script = {sid: src.split('stage = "')[1].split('"')[0] for sid, src in scripts.items()
                       if sid.startswith("roles_")}
    assert stage_of_script == {"roles_pre_acceptance": "pre_acceptance_test", "roles_acceptance": "acceptance_test",
                               "roles_emergency": "acceptance_test", "roles_pilot": "pilot", "roles_live": "live"}

    def roles_script_before(node, seen=()):
        found = set()
        for src in into.get(node, ()):
            if src in stage_of_script:
                found.add(stage_of_script[src])
            elif src not in seen and src not in ("return_to_build",):
                found |= roles_script_before(src, (*seen, node))
        return found

    for gate, (_var, stage) in GATES.items():
        assert roles_script_before(gate) == {stage}, gate


def test_messages_and_correlation():
    root = _tree().getroot()
    messages = {m.get("id"): m.get("name") for m in root.findall("bpmn:message", NS)}
    assert set(messages.values()) == MESSAGES
    props = root.findall("bpmn:correlationProperty", NS)
    assert [p.get("id") for p in props] == ["releaseRef"]
    paths = {messages[e.get("messageRef")]: e.find("bpmn:messagePath", NS).text
             for e in props[0].findall("bpmn:correlationPropertyRetrievalExpression", NS)}
    assert paths == {"release_rfc_requested": "releaseRef", "release_change_approved": "releaseRef",
                     "release_outcome": "releaseRef"}
    key = root.find("bpmn:collaboration/bpmn:correlationKey", NS)
    assert [r.text for r in key.findall("bpmn:correlationPropertyRef", NS)] == ["releaseRef"]
    proc = root.find("bpmn:process", NS)
    throws, catches = {}, {}
    for el in proc.findall("bpmn:intermediateThrowEvent", NS) + proc.findall("bpmn:intermediateCatchEvent", NS):
        med = el.find("bpmn:messageEventDefinition", NS)
        if med is None:
            continue
        bucket = throws if etree.QName(el).localname == "intermediateThrowEvent" else catches
        bucket.setdefault(messages[med.get("messageRef")], []).append(el.get("id"))
        if bucket is throws:  # thrown payloads carry the release reference (correlation) explicitly
            assert med.get(CAMUNDA + "expression")
            if messages[med.get("messageRef")] != "configuration_update":
                assert "'releaseRef': releaseRef" in med.get(CAMUNDA + "expression")
    assert catches == {"release_change_approved": ["catch_change_approved"]}
    assert throws == {"release_rfc_requested": ["throw_rfc_requested"],
                      "configuration_update": ["throw_config_update"],
                      "release_outcome": ["throw_outcome_stopped", "throw_release_outcome",
                                          "throw_outcome_backed_out"]}
    for tid in throws["release_outcome"]:
        expr = proc.find(f"bpmn:intermediateThrowEvent[@id='{tid}']/bpmn:messageEventDefinition", NS).get(
            CAMUNDA + "expression")
        assert "'outcome':" in expr and "'earlyLifeIncidents':" in expr and "'releaseStatus':" in expr


def test_diagram_interchange_is_complete_and_tidy():
    root = _tree().getroot()
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
    flows = proc.findall("bpmn:sequenceFlow", NS)
    for f in flows:
        assert len(edges.get(f.get("id"), [])) >= 2, f"sequence flow {f.get('id')} has no edge"
    assert set(edges) == {f.get("id") for f in flows}

    def inside(inner, outer):
        x, y, w, h = inner
        ox, oy, ow, oh = outer
        return ox <= x and oy <= y and x + w <= ox + ow and y + h <= oy + oh

    lane_boxes = [shapes[lid] for lid in lanes]
    assert all(inside(b, shapes[pool]) for b in lane_boxes)
    for a, b in zip(lane_boxes, lane_boxes[1:]):
        assert a[1] + a[3] == b[1]
    lane_of = {ref.text: lid for lid, lane in lanes.items() for ref in lane.findall("bpmn:flowNodeRef", NS)}
    for n in nodes:
        box = shapes[n.get("id")]
        assert box[2:] == SIZES[_kind(n)], n.get("id")
        assert inside(box, shapes[lane_of[n.get("id")]]), n.get("id")
    boxes = [(n.get("id"), shapes[n.get("id")]) for n in nodes]
    for i, (ida, (x, y, w, h)) in enumerate(boxes):
        for idb, (x2, y2, w2, h2) in boxes[i + 1:]:
            assert not (x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h), f"{ida} overlaps {idb}"
    # edges are orthogonal, start on their source and end on their target, and cross no other shape
    for f in flows:
        pts = [(float(p.get("x")), float(p.get("y"))) for p in edges[f.get("id")]]
        for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
            assert x1 == x2 or y1 == y2, f.get("id")
        for end, ref in ((pts[0], f.get("sourceRef")), (pts[-1], f.get("targetRef"))):
            x, y, w, h = shapes[ref]
            assert x <= end[0] <= x + w and y <= end[1] <= y + h, (f.get("id"), ref)
        for nid, (x, y, w, h) in boxes:
            if nid in (f.get("sourceRef"), f.get("targetRef")):
                continue
            for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
                crosses = (min(x1, x2) < x + w - 1 and x + 1 < max(x1, x2) + (x1 == x2)
                           and min(y1, y2) < y + h - 1 and y + 1 < max(y1, y2) + (y1 == y2))
                assert not crosses, f"{f.get('id')} crosses {nid}"


# ------------------------------------------------------------------------------------------------
# forms
# ------------------------------------------------------------------------------------------------

def _form_keys():
    proc = _process()
    return [(el.get("id"), el.get(CAMUNDA + "formKey"))
            for el in proc.findall("bpmn:startEvent", NS) + proc.findall("bpmn:userTask", NS)]


@pytest.mark.parametrize("element,form_key", _form_keys())
def test_every_user_task_and_start_event_has_a_valid_form(element, form_key):
    assert form_key, f"{element} has no camunda:formKey"
    assert form_key.startswith("release_")
    schema = _form(form_key)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema.get("title") and schema.get("description")
    assert set(schema.get("required", [])) <= set(schema["properties"])
    for name in schema["properties"]:
        assert name[0].islower() and "_" not in name and "-" not in name, f"{form_key}: {name} is not camelCase"
    ui = FORMS / f"{form_key}.ui.json"
    if ui.exists():
        assert set(json.loads(ui.read_text(encoding="utf-8")).get("ui:order", [])) <= set(schema["properties"])


def test_every_release_form_is_used():
    used = {fk for _el, fk in _form_keys()}
    shipped = {p.name[:-5] for p in FORMS.glob("release_*.json") if not p.name.endswith(".ui.json")}
    assert shipped == used


def _errors(form_key, data):
    validator = jsonschema.Draft202012Validator(_form(form_key), format_checker=jsonschema.FormatChecker())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]


def test_gate_forms_follow_the_contract():
    gate_forms = {t.get(CAMUNDA + "formKey") for t in _process().findall("bpmn:userTask", NS)
                  if t.get("id") in GATES and t.get("id") != "build_release"} | {"release_pilot_review"}
    for key in gate_forms:
        props = _form(key)["properties"]
        assert props["decision"]["enum"] == ["approved", "rejected"], key
        assert props["failAction"]["enum"] == ["back_to_build", "stop"], key
        assert "reason" in props, key
    # rejected needs reason and failAction; approved needs every check confirmed
    assert _errors("release_accept_pre_acceptance", {"decision": "rejected"})
    assert _errors("release_accept_pre_acceptance", {"decision": "rejected", "reason": "Design gaps."})
    assert not _errors("release_accept_pre_acceptance",
                       {"decision": "rejected", "reason": "Design gaps.", "failAction": "back_to_build"})
    checks = {k: True for k in ("designMeetsRequirements", "obligationsMet", "buildMechanismsSound",
                                "trainingAndCommunicationPlanned", "acceptanceTestPlanAdequate",
                                "acceptanceCriteriaTestable")}
    assert not _errors("release_accept_pre_acceptance", {"decision": "approved", **checks})
    assert _errors("release_accept_pre_acceptance", {"decision": "approved", **checks, "obligationsMet": False})
    assert _errors("release_accept_pre_acceptance", {"decision": "approved"})
    # outcome and review fields of the contract
    for key in ("release_deploy", "release_pilot_deploy"):
        assert _form(key)["properties"]["outcome"]["enum"] == ["successful", "unsuccessful"]
    measure = _form("release_measure")
    assert {"reviewOutcome", "lessonsLearned"} <= set(measure["required"])
    assert _form("release_agree_plan")["properties"]["decision"]["enum"] == ["approved", "rejected"]
    assert _errors("release_agree_plan", {"decision": "rejected"})
    # the acceptance test: a pass needs a tested back-out, a failure its failures
    base = {"testEvidence": "TP-1", "criteriaResults": [{"criterion": "c", "met": True}]}
    assert _errors("release_acceptance_test", {**base, "testResult": "passed", "backOutTested": False})
    assert _errors("release_acceptance_test", {**base, "testResult": "failed", "backOutTested": False})
    assert not _errors("release_acceptance_test", {**base, "testResult": "failed", "backOutTested": False,
                                                   "testFailures": "Login fails."})
    assert _errors("release_acceptance_test", {**base, "testResult": "passed_with_known_errors",
                                               "backOutTested": True})


def test_emergency_form_covers_the_checks_the_policy_can_make_mandatory():
    checks = _form("release_accept_emergency")["properties"]["emergencyChecks"]
    schema = json.loads((POLICIES / "release_policy.schema.json").read_text(encoding="utf-8"))
    allowed = schema["properties"]["emergency"]["properties"]["mandatory_checks"]["items"]["enum"]
    assert sorted(checks["required"]) == sorted(checks["properties"]) == sorted(allowed)
    # the same checks, one by one, on the normal gates
    normal = set(_form("release_accept_pre_acceptance")["properties"]) | set(
        _form("release_accept_acceptance")["properties"])
    assert set(allowed) <= normal


# ------------------------------------------------------------------------------------------------
# policies, pack manifest, RACI, SoD
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["release_policy", "release_stage_roles"])
def test_release_policies_validate_against_their_schemas(name):
    schema = json.loads((POLICIES / f"{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    value = _yaml(POLICIES / f"{name}.yaml")
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(value)
    assert value.get("defaults") is True


def test_stage_roles_are_table_21_mapped_onto_pack_roles():
    """Every stage's roles follow from the book's Table 21 row of the CI type and the documented role map."""
    data = _yaml(POLICIES / "release_stage_roles.yaml")
    columns = data["table21_columns"]
    role_map = data["role_map"]
    assert {r for roles in role_map.values() for r in roles} <= CONTRACT_ROLES
    assert set(data["ci_types"]) == {"it_service", "central_application", "database_schema", "physical_database",
                                     "infrastructure", "personal_computers", "desktop_build_new_release",
                                     "desktop_installation", "release_authorization"}
    for ci_type, entry in data["ci_types"].items():
        row = dict(zip(columns, entry["table21"]))
        stages = entry["stages"]
        mapped = lambda col: role_map[row[col]]  # noqa: E731
        assert stages["pre_acceptance_test"]["released_from"] == mapped("design_dev_released_from"), ci_type
        assert stages["pre_acceptance_test"]["accepted_into"] == ["release-manager"], ci_type
        assert stages["acceptance_test"]["released_from"] == mapped("pre_acceptance_released_from"), ci_type
        assert stages["acceptance_test"]["accepted_into"] == mapped("acceptance_accepted_by"), ci_type
        assert stages["pilot"]["released_from"] == mapped("acceptance_released_from_to_pilot"), ci_type
        assert stages["pilot"]["accepted_into"] == mapped("live_accepted_and_supported_by"), ci_type
        assert stages["live"]["released_from"] == mapped("acceptance_released_from_to_live"), ci_type
        assert stages["live"]["accepted_into"] == mapped("live_accepted_and_supported_by"), ci_type
    # spot checks against the book
    assert data["ci_types"]["central_application"]["table21"][2] == "test_manager"
    assert data["ci_types"]["release_authorization"]["stages"]["live"]["accepted_into"] == ["service-desk"]


def test_pack_manifest_lists_the_release_process_and_policies():
    pack = _pack()
    listed = {p["key"]: p for p in pack["processes"]}
    assert (PACK / listed[KEY]["bpmn"]).resolve() == FILE.resolve()
    assert listed[KEY]["clause"]
    policies = {p["name"]: p for p in pack["policies"]}
    for name in ("release_policy", "release_stage_roles"):
        assert (PACK / policies[name]["file"]).resolve() == (POLICIES / f"{name}.yaml").resolve()
        assert (PACK / policies[name]["schema"]).resolve() == (POLICIES / f"{name}.schema.json").resolve()


def test_raci_and_sod_name_existing_tasks_and_roles():
    roles = set(_pack()["roles"])
    proc = _process()
    lanes = {ref.text: lane.get("name") for lane in proc.findall("bpmn:laneSet/bpmn:lane", NS)
             for ref in lane.findall("bpmn:flowNodeRef", NS)}
    user_tasks = {t.get("id") for t in proc.findall("bpmn:userTask", NS)}
    entries = _yaml(PACK / "raci.yaml")["processes"][KEY]["tasks"]
    assert set(entries) == user_tasks
    for task_id, entry in entries.items():
        if task_id in GATES:
            # Table 21 decides who does a gate: a RACI Responsible would replace the dynamic candidates
            assert not entry.get("responsible"), task_id
        else:
            assert entry["responsible"] == [lanes[task_id]], task_id
        named = set(entry.get("responsible", [])) | {entry["accountable"]} | set(entry.get("consulted", [])) | set(
            entry.get("informed", []))
        assert named <= roles, task_id
        if entry.get("consulted"):
            assert entry.get("consultation") == "advisory", task_id

    rules = {r["id"]: r for r in _yaml(PACK / "sod.yaml")["rules"] if r["process"] == KEY}
    assert {"release-builder-not-acceptance-acceptor", "release-tester-not-live-releaser"} <= set(rules)
    assert rules["release-builder-not-acceptance-acceptor"]["not_same_as"] == ["task:build_release"]
    assert {"accept_acceptance", "accept_emergency"} <= set(rules["release-builder-not-acceptance-acceptor"]["tasks"])
    assert rules["release-tester-not-live-releaser"] == {
        **rules["release-tester-not-live-releaser"], "tasks": ["release_into_live"],
        "not_same_as": ["task:acceptance_test"]}
    for rule in rules.values():
        assert set(rule["tasks"]) <= user_tasks, rule["id"]
        for other in rule["not_same_as"]:
            assert other == "initiator" or (other.startswith("task:") and other[5:] in user_tasks), rule["id"]


def test_pack_loads_with_the_release_process(engine):
    pack = engine.packs.load(PACK)
    assert KEY in pack.keys
    rules = pack.rules[KEY]
    assert {"release_policy", "release_stage_roles"} <= set(rules.policies)
    assert "release_definition" == rules.start_form


# ------------------------------------------------------------------------------------------------
# the policy scripts, run in the sandbox
# ------------------------------------------------------------------------------------------------

DEFINITION = {
    "releaseRef": "REL-2030-014",
    "releaseVersion": "10.2",
    "releaseType": "major",
    "summary": "Order portal 10.2",
    "description": "New checkout and the fixes of the last quarter.",
    "ciType": "central_application",
    "releaseCis": [{"ciId": "order-portal", "version": "10.2"}, {"ciId": "order-db-schema", "version": "42",
                                                                   "ciType": "database_schema"}],
    "affectedServices": ["online ordering"],
    "deliverables": ["order-portal-10.2.tar", "release notes", "support briefing"],
    "relatedRfcs": ["RFC-101", "RFC-107"],
    "knownErrorsFixed": ["KE-12"],
    "knownErrorsIntroduced": [],
    "acceptanceCriteria": [{"criterion": "Checkout completes", "measure": "Scripted test TP-4",
                            "threshold": "100% of scripts", "agreedWith": "Sales operations"}],
    "deploymentApproach": "phased",
    "deploymentMethod": "push",
    "plannedDeploymentStart": "2030-03-09T20:00:00Z",
    "plannedDeploymentEnd": "2030-03-09T23:00:00Z",
}


def _check(**changes):
    return run_script(_script("check_release_policy"), {**DEFINITION, **changes, "policies": release_policies()})


def test_release_policy_check_accepts_a_valid_definition_and_derives_the_flags():
    out = _check()
    assert out["release_policy_issues"] == []
    assert out["is_emergency"] is False and out["pilot_required"] is True  # major releases are piloted
    assert out["skip_plan_agreement"] is False
    assert out["early_life_period"] == "P14D" and out["emergency_review_deadline"] == "P5D"
    assert out["content_freeze_at"] == "2030-03-04T20:00:00+00:00"
    assert out["gateFailures"] == [] and out["releaseStatus"] == "planned"
    assert not {"optional", "to_utc", "check_definition", "release_type", "pilot_rules"} & set(out)


@pytest.mark.parametrize("changes,pilot", [
    ({"releaseType": "minor"}, False),
    ({"releaseType": "minor", "deploymentApproach": "pilot_then_full"}, True),
    ({"releaseType": "minor", "pilotRequested": True}, True),
    ({"releaseType": "emergency", "emergencyJustification": "Exploited now.", "pilotRequested": True}, False),
])
def test_pilot_rules(changes, pilot):
    out = _check(**changes)
    assert out["release_policy_issues"] == []
    assert out["pilot_required"] is pilot


@pytest.mark.parametrize("changes,issue", [
    ({"releaseRef": "R-1"}, "identification scheme"),
    ({"releaseRef": "REL-2030/1"}, "identification scheme"),
    ({"releaseVersion": "10"}, "version scheme"),
    ({"releaseVersion": "10.x"}, "version scheme"),
    ({"releaseType": "hotfix"}, "not defined in the release policy"),
    ({"releaseType": "emergency"}, "emergency justification"),
    ({"ciType": "mainframe"}, "no release stage roles"),
    ({"deploymentApproach": "canary"}, "approach canary"),
    ({"deploymentMethod": "carrier_pigeon"}, "method carrier_pigeon"),
    ({"relatedRfcs": [f"RFC-{i}" for i in range(21)]}, "allows 20"),
    ({"plannedDeploymentEnd": "2030-03-09T19:00:00Z"}, "later than its start"),
])
def test_release_policy_check_reports_problems(changes, issue):
    issues = _check(**changes)["release_policy_issues"]
    assert len(issues) == 1 and issue in issues[0], issues


@pytest.mark.parametrize("script,stage", [("roles_pre_acceptance", "pre_acceptance_test"),
                                          ("roles_acceptance", "acceptance_test"),
                                          ("roles_emergency", "acceptance_test"),
                                          ("roles_pilot", "pilot"), ("roles_live", "live")])
@pytest.mark.parametrize("ci_type", sorted(_yaml(POLICIES / "release_stage_roles.yaml")["ci_types"]))
def test_stage_role_scripts_copy_table_21(script, stage, ci_type):
    policies = release_policies()
    out = run_script(_script(script), {"policies": policies, "ciType": ci_type})
    expected = policies["release_stage_roles"]["ci_types"][ci_type]["stages"][stage]
    assert out["stage"] == stage
    assert out["release_from_roles"] == expected["released_from"]
    assert out["accept_into_roles"] == expected["accepted_into"]
    assert "stage_entry" not in out


def test_emergency_acceptance_records_missing_and_deferred_checks():
    checks = {k: True for k in _form("release_accept_emergency")["properties"]["emergencyChecks"]["required"]}
    out = run_script(_script("record_emergency_acceptance"),
                     {"policies": release_policies(), "emergencyChecks": {**checks, "obligationsMet": False,
                                                                          "testersReady": False}})
    assert out["missingMandatoryChecks"] == ["obligationsMet"]
    assert out["deferredChecks"] == ["obligationsMet", "testersReady"]
    out = run_script(_script("record_emergency_acceptance"),
                     {"policies": release_policies(), "emergencyChecks": {**checks, "testersReady": False}})
    assert out["missingMandatoryChecks"] == [] and out["deferredChecks"] == ["testersReady"]


def test_return_to_build_keeps_the_failure_and_clears_the_decision():
    base = {"stage": "acceptance_test", "buildIteration": 1, "gateFailures": [], "missingMandatoryChecks": [],
            "outcome": None, "testFailures": None}
    out = run_script(_script("return_to_build"), {**base, "testResult": "failed", "testFailures": "Checkout fails.",
                                                  "decision": "approved", "reason": None, "failAction": None})
    assert out["gateFailures"] == [{"stage": "acceptance_test", "iteration": 1, "reason": "Checkout fails.",
                                    "action": "back_to_build"}]
    assert out["buildIteration"] == 2 and out["decision"] is None and out["testResult"] is None
    out = run_script(_script("return_to_build"), {**base, "testResult": None, "decision": "rejected",
                                                  "reason": "No support staff.", "failAction": "back_to_build"})
    assert out["gateFailures"][0]["reason"] == "No support staff." and out["failAction"] is None
    out = run_script(_script("return_to_build"), {**base, "testResult": None, "decision": "approved",
                                                  "reason": None, "failAction": None,
                                                  "missingMandatoryChecks": ["obligationsMet"]})
    assert "obligationsMet" in out["gateFailures"][0]["reason"]


# ------------------------------------------------------------------------------------------------
# walking the process on the engine
# ------------------------------------------------------------------------------------------------

USERS = {
    "rhea": ["release-manager"], "cora": ["customer"], "bob": ["change-builder"], "bea": ["change-builder"],
    "cole": ["configuration-manager"], "tina": ["test-manager"], "ivy": ["independent-tester"],
    "dan": ["deployment-manager"], "sam": ["service-owner"], "sly": ["service-level-manager"],
    "ike": ["change-implementer"], "desi": ["service-desk"], "root": ["admin"],
    "dual": ["change-builder", "test-manager"], "ivo": ["independent-tester", "deployment-manager"],
}


@pytest.fixture
def directory() -> Directory:  # overrides the conftest fixture: people holding the pack's roles
    return Directory.from_dict({"users": [{"id": u, "name": u.title(), "roles": r} for u, r in USERS.items()]})


@pytest.fixture
def release_engine(engine):
    engine.repository.deploy("iso20000 release", [(FILE.name, FILE.read_bytes())])
    return engine


def _validate(form_key, data):
    errors = _errors(form_key, data)
    assert not errors, f"{form_key}: {errors}"


def start(engine, user, data, business_key):
    _validate("release_definition", data)
    return engine.runtime.start(KEY, business_key=business_key, variables={**data, "policies": load_policies()},
                                principal=engine.directory.get(user).principal()).id


def open_keys(engine, instance_id):
    return sorted(t.task_definition_key for t in engine.tasks.query(process_instance_id=instance_id)[0])


def open_task(engine, instance_id, key):
    return next(t for t in engine.tasks.query(process_instance_id=instance_id)[0] if t.task_definition_key == key)


def variables(engine, instance_id):
    return engine.runtime.get(instance_id).variables


def complete(engine, instance_id, key, user, data, path, roles=None):
    """Complete the open task ``key`` as ``user``; its candidates must be ``roles`` (default: the user's)."""
    tasks = [t for t in engine.tasks.query(process_instance_id=instance_id)[0] if t.task_definition_key == key]
    assert len(tasks) == 1, f"expected task {key}, open: {open_keys(engine, instance_id)}"
    task = tasks[0]
    expected = roles if roles is not None else USERS[user]
    assert task.candidate_roles == list(expected), (key, task.candidate_roles)
    assert set(USERS[user]) & set(task.candidate_roles), (key, user)
    _validate(task.form_key, data)
    engine.tasks.complete(task.id, engine.directory.get(user).principal(), data)
    path.append(key)
    return task


def approve_change(engine, release_ref, **extra):
    """What change_normal must send once the governing RFC is approved (it does not yet)."""
    return engine.messages.correlate("release_change_approved", correlation_keys={"releaseRef": release_ref},
                                     variables={"changeRef": "RFC-900", "changeDecision": "approved", **extra})


def fire_timers(engine):
    with engine.db.begin() as conn:
        conn.execute(text("UPDATE job SET due_at = :t WHERE job_type = 'timer'"),
                     {"t": datetime(2000, 1, 1, tzinfo=timezone.utc)})
    return engine.jobs.run_due()


def buffered(engine, name):
    with engine.db.connect() as conn:
        rows = conn.execute(text("SELECT correlation_json, variables_json FROM buffered_message "
                                 "WHERE message_name = :n"), {"n": name}).all()
    return [(json.loads(r[0]) if r[0] else None, json.loads(r[1])) for r in rows]


PLAN = {
    "releasePlan": "Build in sprint 12, test in sprint 13.",
    "deploymentPlan": "Pilot in Lyon, then all sites over two weekends.",
    "testPlan": "TP-4 scripted checkout tests; back-out rehearsal.",
    "communicationPlan": "Service desk briefing a week before; user mail two days before.",
    "trainingPlan": "Support walkthrough.",
    "riskAssessment": "Checkout outage if the schema migration fails.",
    "deploymentTargets": [{"target": "Lyon", "targetType": "location"}, {"target": "Paris", "targetType": "location"}],
    "pilotTargets": [{"target": "Lyon", "targetType": "location"}],
    "backOutPlan": {"approach": "reverse", "steps": "Redeploy 10.1 and restore the schema backup."},
}
AGREED = {"decision": "approved", "agreedBy": "Cora, sales operations", "acceptanceCriteriaAgreed": True}
BUILT = {"buildSummary": "Portal and schema migration packaged.",
         "componentVersions": [{"ciId": "order-portal", "version": "10.2"}],
         "packageLocation": "dml://order-portal/10.2", "releaseNotes": "New checkout; KE-12 fixed.",
         "builtFromControlledLibraries": True, "licencesManaged": True, "releasedFromDevelopment": True}
A1_OK = {"decision": "approved", "designMeetsRequirements": True, "obligationsMet": True,
         "buildMechanismsSound": True, "trainingAndCommunicationPlanned": True, "acceptanceTestPlanAdequate": True,
         "acceptanceCriteriaTestable": True}
PRE_OK = {"decision": "approved", "preAcceptanceTestsPassed": True,
          "preAcceptanceEvidence": "Unit and integration runs.", "packageReference": "order-portal 10.2 build 311"}
A2_OK = {"decision": "approved", "partiesInformed": True, "testersReady": True, "documentationControlled": True,
         "configurationDataUpdated": True, "acceptanceEnvironment": "dedicated_environment",
         "acceptanceEnvironmentBaseline": "BL-ACC-77"}
TEST_OK = {"testResult": "passed", "testEvidence": "TP-4 run 3.", "backOutTested": True,
           "criteriaResults": [{"criterion": "Checkout completes", "met": True}]}
TEST_FAILED = {"testResult": "failed", "testEvidence": "TP-4 run 1.", "backOutTested": True,
               "criteriaResults": [{"criterion": "Checkout completes", "met": False}],
               "testFailures": "Checkout times out with two items."}
PILOT_RELEASE_OK = {"decision": "approved", "acceptanceCriteriaMet": True, "pilotPlanAgreed": True,
                    "backOutPlanTested": True, "deliverablesControlled": True}
PILOT_ACCEPT_OK = {"decision": "approved", "pilotTargetsReady": True, "pilotUsersInformed": True,
                   "pilotSupportArranged": True, "evaluationCriteriaAgreed": True}
PILOT_DEPLOYED = {"outcome": "successful", "pilotTargetsDeployed": ["Lyon"], "pilotIncidents": 1,
                  "evaluationSummary": "One minor display issue; users like the new checkout."}
PILOT_REVIEW_OK = {"decision": "approved", "pilotObjectivesMet": True}
A3_OK = {"decision": "approved", "acceptanceCriteriaMet": True, "releaseDocumentationControlled": True,
         "deploymentPlanAccepted": True, "communicationsDone": True, "staffAndUsersTrained": True,
         "supportResourcesPlanned": True, "deliverablesControlled": True, "backOutPlanTested": True}
LIVE_ACCEPT_OK = {"decision": "approved", "supportStaffReady": True, "serviceDeskBriefed": True,
                  "knownErrorsPublished": True, "earlyLifeSupportArranged": True}
BASELINE_BEFORE = {"baselineBefore": {"baselineId": "BL-PROD-120", "capturedAt": "2030-03-09T19:30:00Z",
                                      "ciCount": 14}}
DEPLOYED = {"outcome": "successful", "deploymentLog": "All sites on 10.2.", "targetsPlanned": 2,
            "targetsSucceeded": 2, "actualStart": "2030-03-09T20:02:00Z", "actualEnd": "2030-03-09T22:10:00Z"}
BASELINE_AFTER = {"baselineAfter": {"baselineId": "BL-PROD-121", "capturedAt": "2030-03-09T22:30:00Z",
                                    "ciCount": 15},
                  "comparisonReport": "order-portal 10.1 -> 10.2; schema 41 -> 42; one new CI (checkout cache)."}
MEASURED = {"earlyLifeIncidents": 3, "incidentReferences": ["INC-1", "INC-2", "INC-3"],
            "impactAnalysis": {"customer": "Two slow checkouts.", "business": "None measurable.",
                               "itOperations": "One restart.", "supportResources": "Within plan."},
            "reviewOutcome": "objectives_met", "lessonsLearned": "Warm the cache before opening.",
            "documentationComplete": True}

#: Table 21 for a central application (policy release_stage_roles)
CENTRAL = {"pre_acceptance_test": (["change-builder"], ["release-manager"]),
           "acceptance_test": (["configuration-manager"], ["test-manager"]),
           "pilot": (["configuration-manager"], ["service-owner"]),
           "live": (["configuration-manager"], ["service-owner"])}


def test_full_staged_release_with_pilot(release_engine):
    engine, path = release_engine, []
    iid = start(engine, "rhea", DEFINITION, "REL-2030-014")
    # the governing RFC is requested and the release waits for its approval
    assert open_keys(engine, iid) == []
    assert [a["activityId"] for a in engine.runtime.get(iid).active_activities] == ["catch_change_approved"]
    [(corr, payload)] = buffered(engine, "release_rfc_requested")
    assert corr == {"releaseRef": "REL-2030-014"}
    assert payload["relatedRfcs"] == ["RFC-101", "RFC-107"] and payload["emergency"] is False
    assert payload["requestedWindow"] == {"start": "2030-03-09T20:00:00Z", "end": "2030-03-09T23:00:00Z"}
    assert "policies" not in payload
    # a message for another release does not move this one
    with pytest.raises(NotFound):
        approve_change(engine, "REL-2030-999")
    result = approve_change(engine, "REL-2030-014")
    assert result.correlated == [{"processInstanceId": iid, "activityId": "catch_change_approved"}]
    assert variables(engine, iid)["changeRef"] == "RFC-900"

    complete(engine, iid, "plan_release", "rhea", PLAN, path)
    complete(engine, iid, "agree_plan", "cora", AGREED, path)
    frm, into = CENTRAL["pre_acceptance_test"]
    complete(engine, iid, "build_release", "bob", BUILT, path, roles=frm)
    complete(engine, iid, "accept_pre_acceptance", "rhea", A1_OK, path, roles=into)
    frm, into = CENTRAL["acceptance_test"]
    complete(engine, iid, "release_from_pre_acceptance", "cole", PRE_OK, path, roles=frm)
    complete(engine, iid, "accept_acceptance", "tina", A2_OK, path, roles=into)
    complete(engine, iid, "acceptance_test", "ivy", TEST_OK, path)
    frm, into = CENTRAL["pilot"]
    complete(engine, iid, "release_into_pilot", "cole", PILOT_RELEASE_OK, path, roles=frm)
    complete(engine, iid, "accept_into_pilot", "sam", PILOT_ACCEPT_OK, path, roles=into)
    complete(engine, iid, "pilot_deploy", "dan", PILOT_DEPLOYED, path)
    complete(engine, iid, "review_pilot", "sam", PILOT_REVIEW_OK, path)
    frm, into = CENTRAL["live"]
    complete(engine, iid, "release_into_live", "cole", A3_OK, path, roles=frm)
    complete(engine, iid, "accept_into_live", "sam", LIVE_ACCEPT_OK, path, roles=into)
    complete(engine, iid, "baseline_before", "cole", BASELINE_BEFORE, path)
    complete(engine, iid, "deploy_live", "dan", DEPLOYED, path)
    complete(engine, iid, "baseline_after", "cole", BASELINE_AFTER, path)
    # early-life support: the timer of policy release_policy (P14D) holds the release
    assert open_keys(engine, iid) == []
    assert [a["activityId"] for a in engine.runtime.get(iid).active_activities] == ["wait_early_life"]
    with engine.db.connect() as conn:
        due = conn.execute(text("SELECT due_at FROM job WHERE instance_id = :i AND job_type = 'timer'"),
                           {"i": iid}).scalar_one()
    due = due if isinstance(due, datetime) else datetime.fromisoformat(str(due))
    due = due if due.tzinfo else due.replace(tzinfo=timezone.utc)
    assert timedelta(days=13) < due - datetime.now(timezone.utc) <= timedelta(days=14)
    assert fire_timers(engine) == 1
    complete(engine, iid, "measure_release", "rhea", MEASURED, path)

    instance = engine.runtime.get(iid)
    assert instance.state == "completed", instance.incidents
    assert path == ["plan_release", "agree_plan", "build_release", "accept_pre_acceptance",
                    "release_from_pre_acceptance", "accept_acceptance", "acceptance_test", "release_into_pilot",
                    "accept_into_pilot", "pilot_deploy", "review_pilot", "release_into_live", "accept_into_live",
                    "baseline_before", "deploy_live", "baseline_after", "measure_release"]
    assert instance.variables["gateFailures"] == []
    [(_, config)] = buffered(engine, "configuration_update")
    assert config["releaseRef"] == "REL-2030-014" and config["source"] == "release_deployment"
    assert config["baselineBefore"]["baselineId"] == "BL-PROD-120"
    assert config["baselineAfter"]["baselineId"] == "BL-PROD-121"
    [(corr, outcome)] = buffered(engine, "release_outcome")
    assert corr == {"releaseRef": "REL-2030-014"}
    assert outcome["outcome"] == "successful" and outcome["earlyLifeIncidents"] == 3
    assert outcome["releaseStatus"] == "closed" and outcome["reviewOutcome"] == "objectives_met"


IT_SERVICE = {**DEFINITION, "releaseRef": "REL-2030-015", "releaseType": "minor", "ciType": "it_service"}


def _to_acceptance_test(engine, iid, path, builder="bob"):
    complete(engine, iid, "build_release", builder, BUILT, path, roles=["change-builder"])
    complete(engine, iid, "accept_pre_acceptance", "rhea", A1_OK, path, roles=["release-manager"])
    complete(engine, iid, "release_from_pre_acceptance", "bea", PRE_OK, path, roles=["change-builder"])
    complete(engine, iid, "accept_acceptance", "tina", A2_OK, path, roles=["test-manager"])


def test_failed_acceptance_test_and_rejected_gates_go_back_to_build_or_stop(release_engine):
    engine, path = release_engine, []
    iid = start(engine, "rhea", IT_SERVICE, "REL-2030-015")
    approve_change(engine, "REL-2030-015")
    complete(engine, iid, "plan_release", "rhea", PLAN, path)
    complete(engine, iid, "agree_plan", "cora", {"decision": "rejected", "reason": "Pilot site is closed in March."},
             path)
    complete(engine, iid, "plan_release", "rhea", PLAN, path)
    complete(engine, iid, "agree_plan", "cora", AGREED, path)
    _to_acceptance_test(engine, iid, path)
    # a failed acceptance test returns the release to design and build
    complete(engine, iid, "acceptance_test", "ivy", TEST_FAILED, path)
    assert open_keys(engine, iid) == ["build_release"]
    v = variables(engine, iid)
    assert v["gateFailures"] == [{"stage": "acceptance_test", "iteration": 1, "action": "back_to_build",
                                  "reason": "Checkout times out with two items."}]
    assert v["buildIteration"] == 2 and v["release_from_roles"] == ["change-builder"]
    _to_acceptance_test(engine, iid, path)
    complete(engine, iid, "acceptance_test", "ivy", TEST_OK, path)
    # minor release, phased: no pilot; Table 21 for an IT service at the live boundary
    complete(engine, iid, "release_into_live", "rhea",
             {"decision": "rejected", "reason": "Support not staffed.", "failAction": "back_to_build"}, path,
             roles=["release-manager", "deployment-manager"])
    assert open_keys(engine, iid) == ["build_release"]
    _to_acceptance_test(engine, iid, path)
    complete(engine, iid, "acceptance_test", "ivy", TEST_OK, path)
    complete(engine, iid, "release_into_live", "dan", A3_OK, path, roles=["release-manager", "deployment-manager"])
    complete(engine, iid, "accept_into_live", "sly",
             {"decision": "rejected", "reason": "The customer withdrew the service.", "failAction": "stop"}, path,
             roles=["service-level-manager"])
    instance = engine.runtime.get(iid)
    assert instance.state == "completed" and open_keys(engine, iid) == []
    assert [e["action"] for e in instance.variables["gateFailures"]] == ["back_to_build", "back_to_build", "stop"]
    assert instance.variables["releaseStatus"] == "cancelled"
    [(corr, outcome)] = buffered(engine, "release_outcome")
    assert corr == {"releaseRef": "REL-2030-015"}
    assert outcome == {**outcome, "releaseStatus": "cancelled", "outcome": "unsuccessful", "earlyLifeIncidents": 0,
                       "stoppedAtStage": "live", "reason": "The customer withdrew the service."}
    assert buffered(engine, "configuration_update") == []
    assert path.count("build_release") == 3 and "baseline_before" not in path


def test_unsuccessful_live_deployment_is_backed_out(release_engine):
    engine, path = release_engine, []
    iid = start(engine, "rhea", {**IT_SERVICE, "releaseRef": "REL-2030-016"}, "REL-2030-016")
    approve_change(engine, "REL-2030-016")
    complete(engine, iid, "plan_release", "rhea", PLAN, path)
    complete(engine, iid, "agree_plan", "cora", AGREED, path)
    _to_acceptance_test(engine, iid, path)
    complete(engine, iid, "acceptance_test", "ivy", TEST_OK, path)
    complete(engine, iid, "release_into_live", "dan", A3_OK, path, roles=["release-manager", "deployment-manager"])
    complete(engine, iid, "accept_into_live", "sly", LIVE_ACCEPT_OK, path, roles=["service-level-manager"])
    complete(engine, iid, "baseline_before", "cole", BASELINE_BEFORE, path)
    complete(engine, iid, "deploy_live", "dan", {"outcome": "unsuccessful", "deploymentLog": "Paris failed.",
                                                 "targetsPlanned": 2, "targetsSucceeded": 1,
                                                 "failureReason": "Schema migration timed out."}, path)
    assert open_keys(engine, iid) == ["backout"]
    complete(engine, iid, "backout", "dan", {
        "remediationAction": "reversed", "actionsTaken": "Redeployed 10.1, restored schema 41.", "followedPlan": True,
        "configurationRestored": True, "failureInvestigation": "Lock contention on the orders table.",
        "incidentsRaised": 2, "incidentReferences": ["INC-7", "INC-8"]}, path)
    instance = engine.runtime.get(iid)
    assert instance.state == "completed", instance.incidents
    assert path[-3:] == ["baseline_before", "deploy_live", "backout"]
    with engine.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM buffered_message WHERE message_name='release_outcome'")
                            ).scalar() == 1
    [(corr, outcome)] = buffered(engine, "release_outcome")
    assert corr == {"releaseRef": "REL-2030-016"}
    assert outcome["outcome"] == "unsuccessful" and outcome["releaseStatus"] == "backed_out"
    assert outcome["earlyLifeIncidents"] == 2 and "Lock contention" in outcome["failureInvestigation"]
    assert buffered(engine, "configuration_update") == []  # nothing changed in live


EMERGENCY = {**DEFINITION, "releaseRef": "REL-2030-017", "releaseVersion": "10.1.1", "releaseType": "emergency",
             "ciType": "infrastructure", "summary": "Firewall firmware 7.4.2",
             "emergencyJustification": "Exploited VPN flaw; emergency change ECR-5.", "relatedRfcs": ["ECR-5"],
             "deploymentApproach": "big_bang", "pilotRequested": True}
EMERGENCY_CHECKS = {"designMeetsRequirements": True, "obligationsMet": True, "buildMechanismsSound": True,
                    "trainingAndCommunicationPlanned": False, "acceptanceTestPlanAdequate": True,
                    "acceptanceCriteriaTestable": True, "partiesInformed": False, "testersReady": True,
                    "documentationControlled": False, "configurationDataUpdated": True}


def test_emergency_release_skips_pilot_with_shortened_acceptance_and_post_hoc_review(release_engine):
    engine, path = release_engine, []
    iid = start(engine, "rhea", EMERGENCY, "REL-2030-017")
    v = variables(engine, iid)
    assert v["is_emergency"] is True and v["pilot_required"] is False and v["skip_plan_agreement"] is True
    [(_, payload)] = buffered(engine, "release_rfc_requested")
    assert payload["emergency"] is True
    approve_change(engine, "REL-2030-017", changeRef="ECR-5")
    complete(engine, iid, "plan_release", "rhea", PLAN, path)
    # no plan agreement (the emergency change approved it); Table 21 for infrastructure
    complete(engine, iid, "build_release", "bob", BUILT, path, roles=["change-builder"])
    assert open_keys(engine, iid) == ["accept_emergency"]
    # a mandatory check not confirmed sends the release back to build
    complete(engine, iid, "accept_emergency", "ike", {
        "decision": "approved", "acceptanceEnvironment": "production_maintenance_slot",
        "emergencyChecks": {**EMERGENCY_CHECKS, "configurationDataUpdated": False}}, path,
        roles=["change-implementer"])
    assert open_keys(engine, iid) == ["build_release"]
    assert "configurationDataUpdated" in variables(engine, iid)["gateFailures"][0]["reason"]
    complete(engine, iid, "build_release", "bob", BUILT, path, roles=["change-builder"])
    complete(engine, iid, "accept_emergency", "ike", {
        "decision": "approved", "acceptanceEnvironment": "production_maintenance_slot",
        "emergencyChecks": EMERGENCY_CHECKS}, path, roles=["change-implementer"])
    assert variables(engine, iid)["deferredChecks"] == ["documentationControlled", "partiesInformed",
                                                        "trainingAndCommunicationPlanned"]
    complete(engine, iid, "acceptance_test", "ivy", TEST_OK, path)
    # no pilot for an emergency release, even when asked for
    assert open_keys(engine, iid) == ["release_into_live"]
    complete(engine, iid, "release_into_live", "cole", A3_OK, path, roles=["configuration-manager"])
    complete(engine, iid, "accept_into_live", "ike", LIVE_ACCEPT_OK, path, roles=["change-implementer"])
    complete(engine, iid, "baseline_before", "cole", BASELINE_BEFORE, path)
    complete(engine, iid, "deploy_live", "dan", DEPLOYED, path)
    complete(engine, iid, "baseline_after", "cole", BASELINE_AFTER, path)
    [review] = [t for t in engine.tasks.query(process_instance_id=iid)[0]]
    assert review.task_definition_key == "emergency_review"
    assert review.due is not None  # policy release_policy: emergency.review_deadline (P5D)
    complete(engine, iid, "emergency_review", "rhea", {
        "deferredChecksCompleted": True, "deferredChecksEvidence": "Comms sent; docs filed under CM.",
        "emergencyJustified": True, "justificationRationale": "Active exploitation.", "documentationComplete": True},
        path)
    assert fire_timers(engine) == 1
    complete(engine, iid, "measure_release", "rhea", {**MEASURED, "earlyLifeIncidents": 0}, path)
    assert engine.runtime.get(iid).state == "completed"
    assert path == ["plan_release", "build_release", "accept_emergency", "build_release", "accept_emergency",
                    "acceptance_test", "release_into_live", "accept_into_live", "baseline_before", "deploy_live",
                    "baseline_after", "emergency_review", "measure_release"]
    [(_, outcome)] = buffered(engine, "release_outcome")
    assert outcome["emergency"] is True and outcome["earlyLifeIncidents"] == 0 and outcome["gateFailures"] == 1


def test_definition_against_policy_and_change_rejected(release_engine):
    engine, path = release_engine, []
    iid = start(engine, "rhea", {**DEFINITION, "releaseRef": "R-18", "ciType": "mainframe"}, "REL-2030-018")
    assert open_keys(engine, iid) == ["revise_definition"]
    assert len(variables(engine, iid)["release_policy_issues"]) == 2
    complete(engine, iid, "revise_definition", "rhea", {**DEFINITION, "releaseRef": "REL-2030-018"}, path)
    assert variables(engine, iid)["release_policy_issues"] == []
    [(corr, _)] = buffered(engine, "release_rfc_requested")
    assert corr == {"releaseRef": "REL-2030-018"}
    approve_change(engine, "REL-2030-018", changeDecision="rejected")
    instance = engine.runtime.get(iid)
    assert instance.state == "completed" and open_keys(engine, iid) == []
    assert buffered(engine, "release_outcome") == []


def test_segregation_of_duties_with_the_pack_rules(engine):
    """Applied as a pack (RACI, SoD, forms, policies): the builder may not accept the release into acceptance
    test, and the tester may not release it into live."""
    engine.packs.apply(PACK)
    data = {**IT_SERVICE, "releaseRef": "REL-2030-019"}
    iid = engine.runtime.start(KEY, business_key="REL-2030-019", variables=data,
                               principal=engine.directory.get("rhea").principal()).id
    assert variables(engine, iid)["policies"]["release_stage_roles"]["ci_types"]["it_service"]
    approve_change(engine, "REL-2030-019")
    path = []

    def do(key, user, payload, roles=None):
        complete(engine, iid, key, user, payload, path, roles)

    do("plan_release", "rhea", PLAN)
    do("agree_plan", "cora", AGREED)
    do("build_release", "dual", BUILT, ["change-builder"])
    do("accept_pre_acceptance", "rhea", A1_OK, ["release-manager"])
    do("release_from_pre_acceptance", "bea", PRE_OK, ["change-builder"])
    task = open_task(engine, iid, "accept_acceptance")
    assert task.candidate_roles == ["test-manager"]
    with pytest.raises(Forbidden) as err:
        engine.tasks.complete(task.id, engine.directory.get("dual").principal(), A2_OK)
    assert "release-builder-not-acceptance-acceptor" in str(err.value)
    do("accept_acceptance", "tina", A2_OK, ["test-manager"])
    do("acceptance_test", "ivo", TEST_OK, ["independent-tester"])
    task = open_task(engine, iid, "release_into_live")
    assert task.candidate_roles == ["release-manager", "deployment-manager"]
    with pytest.raises(Forbidden) as err:
        engine.tasks.complete(task.id, engine.directory.get("ivo").principal(), A3_OK)
    assert "release-tester-not-live-releaser" in str(err.value)
    do("release_into_live", "dan", A3_OK, ["release-manager", "deployment-manager"])
    assert open_keys(engine, iid) == ["accept_into_live"]
