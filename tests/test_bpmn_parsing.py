"""Hardened parsing and validation of uploaded BPMN/DMN (itsmflow.engine.bpmn)."""

from __future__ import annotations

import ast
import json
import time
import tracemalloc
from pathlib import Path

import pytest
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState

from itsmflow.engine.bpmn import (
    DOCTYPE_REFUSED,
    ParsedDeployment,
    parse_deployment,
    parse_document,
    spec_from_json,
    spec_to_json,
)
from itsmflow.engine.errors import DeploymentInvalid, SourceIssue

FIXTURES = Path(__file__).parent / "fixtures" / "bpmn"
# the shared corpus sits beside the checkout (../shared); /work/shared on the developers' machines
CORPUS = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "corpus", Path("/work/shared/corpus"))
               if p.is_dir()), Path(__file__).resolve().parents[2] / "shared" / "corpus")
MIWG = CORPUS / "miwg"
VENDORS = CORPUS / "miwg-vendors"

HEADER = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" '
    'xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="defs" targetNamespace="http://example.org">\n'
)
FOOTER = "</bpmn:definitions>\n"


def bpmn(body: str) -> bytes:
    return (HEADER + body + FOOTER).encode("utf-8")


def refused(files, **kwargs) -> list[SourceIssue]:
    with pytest.raises(DeploymentInvalid) as info:
        parse_deployment(files, **kwargs)
    assert info.value.issues, "DeploymentInvalid without issues"
    return info.value.issues


def line_col_of(data: bytes, needle: str, occurrence: int = 0) -> tuple[int, int]:
    text = data.decode("utf-8")
    pos = -1
    for _ in range(occurrence + 1):
        pos = text.index(needle, pos + 1)
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def no_python_import(expr: str) -> None:
    """A stand-in for the sandbox's AST checker."""
    tree = ast.parse(expr)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            raise ValueError(f"name {node.id!r} is not allowed")
        if isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            raise ValueError(f"attribute {node.attr!r} is not allowed")


SIMPLE_PROCESS = """  <bpmn:process id="simple" isExecutable="true">
    <bpmn:startEvent id="s1" />
    <bpmn:sequenceFlow id="f1" sourceRef="s1" targetRef="t1" />
    <bpmn:task id="t1" name="Do it" />
    <bpmn:sequenceFlow id="f2" sourceRef="t1" targetRef="e1" />
    <bpmn:endEvent id="e1" />
  </bpmn:process>
"""


# --------------------------------------------------------------------------------------------------
# 1. safe XML
# --------------------------------------------------------------------------------------------------


def test_xxe_file_entity_is_refused_without_reading_the_file():
    data = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d" targetNamespace="t">\n'
        '  <bpmn:process id="p" name="&xxe;" isExecutable="true"><bpmn:documentation>&xxe;</bpmn:documentation>'
        "</bpmn:process>\n"
        "</bpmn:definitions>\n"
    ).encode()
    issues = refused([("xxe.bpmn", data)])
    assert len(issues) == 1
    issue = issues[0]
    assert issue.message == DOCTYPE_REFUSED
    assert (issue.file, issue.line, issue.column) == ("xxe.bpmn", 2, 1)
    text = " ".join(str(i) for i in issues)
    assert "root:" not in text and "/bin/" not in text


def test_billion_laughs_is_refused_quickly_with_bounded_memory():
    ents = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10)
    ]
    data = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n' + "\n".join(ents) + "\n]>\n"
        '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d" targetNamespace="t">'
        '<bpmn:process id="p" name="&lol9;"/></bpmn:definitions>'
    ).encode()
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        issues = refused([("lol.bpmn", data)])
    finally:
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < 2.0
    assert peak < 20 * 1024 * 1024
    assert issues[0].message == DOCTYPE_REFUSED
    assert issues[0].line == 2


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE bpmn:definitions SYSTEM "http://127.0.0.1:9/evil.dtd">',
        '<!DOCTYPE bpmn:definitions PUBLIC "-//X//Y" "file:///etc/passwd">',
        '<!DOCTYPE x [<!ENTITY % pe SYSTEM "http://127.0.0.1:9/pe.dtd"> %pe;]>',
        '<!-- a comment first --><?pi x?>\n<!DOCTYPE x>',
    ],
    ids=["remote-dtd", "local-dtd", "parameter-entity", "after-comment"],
)
def test_any_doctype_is_refused(doctype):
    data = ('<?xml version="1.0"?>\n' + doctype + "\n").encode() + bpmn(SIMPLE_PROCESS).split(b"\n", 1)[1]
    issues = refused([("dtd.bpmn", data)])
    assert [i.message for i in issues] == [DOCTYPE_REFUSED]


def test_doctype_is_found_in_utf16_documents_and_exotic_encodings_are_refused():
    text = '<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE x [<!ENTITY a "b">]>\n<x/>'
    doc, issues = parse_document("u16.bpmn", text.encode("utf-16"))
    assert doc is None and issues[0].message == DOCTYPE_REFUSED
    utf7 = b'<?xml version="1.0" encoding="UTF-7"?>\n+ADw-+ACE-DOCTYPE x+AD4-\n<x/>'
    doc, issues = parse_document("u7.bpmn", utf7)
    assert doc is None and "unsupported encoding" in issues[0].message


def test_oversized_file_is_refused_before_parsing():
    data = bpmn(SIMPLE_PROCESS)
    issues = refused([("big.bpmn", data)], max_bytes=200)
    assert "200 bytes" in issues[0].message and str(len(data)) in issues[0].message
    # default cap: 5 MB
    big = bpmn("<!--" + "x" * (5 * 1024 * 1024) + "-->\n" + SIMPLE_PROCESS)
    issues = refused([("huge.bpmn", big)])
    assert "5242880" in issues[0].message and "5.0 MB" in issues[0].message


def test_unclosed_tag_reports_line_and_column():
    data = bpmn(
        '  <bpmn:process id="p" isExecutable="true">\n'
        '    <bpmn:task id="t">\n'
        "  </bpmn:process>\n"
    )
    issues = refused([("broken.bpmn", data)])
    assert len(issues) == 1
    issue = issues[0]
    line, col = line_col_of(data, "</bpmn:process>")
    assert (issue.file, issue.line, issue.column) == ("broken.bpmn", line, col)
    assert "XML syntax error" in issue.message and "task line 4" in issue.message


def test_original_bytes_are_kept_verbatim():
    data = (MIWG / "A.1.0.bpmn").read_bytes()  # ISO-8859-1 declared
    deployment = parse_deployment([("A.1.0.bpmn", data)])
    assert deployment.files["A.1.0.bpmn"] == data
    assert deployment.file_kinds == {"A.1.0.bpmn": "bpmn"}


def test_not_a_bpmn_document():
    issues = refused([("note.xml", b'<?xml version="1.0"?>\n<note><to>x</to></note>\n')])
    assert (issues[0].line, issues[0].column) == (2, 1)
    assert "not a BPMN 2.0 or DMN document" in issues[0].message


# --------------------------------------------------------------------------------------------------
# 2. XSD
# --------------------------------------------------------------------------------------------------


def test_schema_violations_are_located_and_readable():
    body = (
        '  <bpmn:process id="p" isExecutable="true">\n'
        '    <bpmn:startEvent id="s1" />\n'
        '    <bpmn:sequenceFlow id="f1" sourceRef="s1" />\n'
        '    <bpmn:task id="t1" /><bpmn:bogus id="b1" />\n'
        "  </bpmn:process>\n"
    )
    data = bpmn(body)
    issues = refused([("xsd.bpmn", data)])
    by_msg = {i.message: i for i in issues}
    missing = next(i for i in issues if "targetRef" in i.message)
    assert (missing.line, missing.column) == line_col_of(data, "<bpmn:sequenceFlow")
    assert "required but missing" in missing.message
    bogus = next(i for i in issues if "bogus" in i.message)
    assert (bogus.line, bogus.column) == line_col_of(data, "<bpmn:bogus")
    assert all("{http" not in m for m in by_msg)
    assert bogus.message.startswith("schema: Element 'bpmn:bogus'")


def test_vendor_extensions_do_not_break_schema_validation():
    deployment = parse_deployment([("incident.bpmn", (FIXTURES / "camunda_incident.bpmn").read_bytes())])
    assert list(deployment.processes) == ["incident_management"]


def test_schema_errors_are_collected_across_files():
    bad1 = bpmn('  <bpmn:process id="a"><bpmn:bogus/></bpmn:process>\n')
    bad2 = b'<?xml version="1.0"?>\n<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">\n'
    issues = refused([("one.bpmn", bad1), ("two.bpmn", bad2), ("ok.bpmn", bpmn(SIMPLE_PROCESS))])
    assert {i.file for i in issues} == {"one.bpmn", "two.bpmn"}


def test_dmn_schema_violation_is_located():
    data = (FIXTURES / "priority.dmn").read_bytes().replace(b'hitPolicy="FIRST"', b'hitPolicy="SOMETIMES"')
    issues = refused([("priority.dmn", data)])
    assert issues[0].file == "priority.dmn"
    assert (issues[0].line, issues[0].column) == line_col_of(data, "<decisionTable")
    assert "hitPolicy" in issues[0].message


# --------------------------------------------------------------------------------------------------
# 3. process validation (ours + SpiffWorkflow's)
# --------------------------------------------------------------------------------------------------


def test_dangling_sequence_flow_and_missing_gateway_conditions_are_all_reported():
    body = """  <bpmn:process id="p" isExecutable="true">
    <bpmn:startEvent id="s1" />
    <bpmn:sequenceFlow id="f1" sourceRef="s1" targetRef="gw" />
    <bpmn:exclusiveGateway id="gw" />
    <bpmn:sequenceFlow id="f_a" sourceRef="gw" targetRef="e1" />
    <bpmn:sequenceFlow id="f_b" sourceRef="gw" targetRef="e1" />
    <bpmn:sequenceFlow id="f_c" sourceRef="gw" targetRef="nowhere" />
    <bpmn:endEvent id="e1" />
  </bpmn:process>
"""
    data = bpmn(body)
    issues = refused([("flows.bpmn", data)])
    located = {(i.line, i.column) for i in issues}
    for flow in ("f_a", "f_b", "f_c"):
        assert line_col_of(data, f'<bpmn:sequenceFlow id="{flow}"') in located
    dangling = next(i for i in issues if "nowhere" in i.message)
    assert "targetRef 'nowhere' does not exist" in dangling.message


def test_spiff_validation_error_is_mapped_to_line_and_column():
    # a script task without a script: only SpiffWorkflow notices, and tells us the element id only;
    # the start tag spans two lines (libxml2 records the line where it ends)
    body = """  <bpmn:process id="p" isExecutable="true">
    <bpmn:startEvent id="s1" />
    <bpmn:sequenceFlow id="f1" sourceRef="s1" targetRef="script1" />
    <bpmn:scriptTask id="script1"
        name="No script here" />
    <bpmn:sequenceFlow id="f2" sourceRef="script1" targetRef="e1" />
    <bpmn:endEvent id="e1" />
  </bpmn:process>
"""
    data = bpmn(body)
    issues = refused([("spiff.bpmn", data)])
    assert len(issues) == 1
    assert (issues[0].line, issues[0].column) == line_col_of(data, "<bpmn:scriptTask")
    assert "scriptTask 'script1'" in issues[0].message and "No Script Provided" in issues[0].message


def test_missing_called_process_and_empty_timer_are_located():
    body = """  <bpmn:process id="p" isExecutable="true">
    <bpmn:startEvent id="s1" />
    <bpmn:sequenceFlow id="f1" sourceRef="s1" targetRef="call" />
    <bpmn:callActivity id="call" calledElement="not_deployed" />
    <bpmn:sequenceFlow id="f2" sourceRef="call" targetRef="e1" />
    <bpmn:endEvent id="e1" />
  </bpmn:process>
  <bpmn:process id="q" isExecutable="true">
    <bpmn:startEvent id="s2"><bpmn:timerEventDefinition id="td" /></bpmn:startEvent>
    <bpmn:sequenceFlow id="f3" sourceRef="s2" targetRef="e2" />
    <bpmn:endEvent id="e2" />
  </bpmn:process>
"""
    data = bpmn(body)
    issues = refused([("calls.bpmn", data)])
    call = next(i for i in issues if "not_deployed" in i.message)
    assert (call.line, call.column) == line_col_of(data, "<bpmn:callActivity")
    timer = next(i for i in issues if "Time Specification" in i.message)
    assert (timer.line, timer.column) == line_col_of(data, '<bpmn:startEvent id="s2"')


def test_business_rule_task_needs_a_deployed_decision():
    body = """  <bpmn:process id="p" isExecutable="true">
    <bpmn:startEvent id="s1" />
    <bpmn:sequenceFlow id="f1" sourceRef="s1" targetRef="rule" />
    <bpmn:businessRuleTask id="rule" camunda:decisionRef="missing_decision" />
    <bpmn:sequenceFlow id="f2" sourceRef="rule" targetRef="e1" />
    <bpmn:endEvent id="e1" />
  </bpmn:process>
"""
    data = bpmn(body)
    issues = refused([("rules.bpmn", data), ("priority.dmn", (FIXTURES / "priority.dmn").read_bytes())])
    assert len(issues) == 1
    assert issues[0].file == "rules.bpmn"
    assert (issues[0].line, issues[0].column) == line_col_of(data, "<bpmn:businessRuleTask")
    assert "missing_decision" in issues[0].message


def test_duplicate_process_ids_across_files():
    issues = refused([("a.bpmn", bpmn(SIMPLE_PROCESS)), ("b.bpmn", bpmn(SIMPLE_PROCESS))])
    assert issues[0].file == "b.bpmn" and "duplicate process id 'simple'" in issues[0].message


def test_reserved_ids_are_refused():
    data = bpmn(SIMPLE_PROCESS.replace('"e1"', '"End"'))
    issues = refused([("reserved.bpmn", data)])
    assert any("'End' is reserved" in i.message for i in issues)


# --------------------------------------------------------------------------------------------------
# expressions
# --------------------------------------------------------------------------------------------------


def test_refused_expressions_are_reported_at_their_element():
    body = """  <bpmn:process id="p" isExecutable="true">
    <bpmn:startEvent id="s1" />
    <bpmn:sequenceFlow id="f1" sourceRef="s1" targetRef="gw" />
    <bpmn:exclusiveGateway id="gw" default="f_ok" />
    <bpmn:sequenceFlow id="f_evil" sourceRef="gw" targetRef="script">
      <bpmn:conditionExpression>__import__("os").system("id") == 0</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="f_ok" sourceRef="gw" targetRef="script" />
    <bpmn:scriptTask id="script"><bpmn:script>x = ().__class__</bpmn:script></bpmn:scriptTask>
    <bpmn:sequenceFlow id="f2" sourceRef="script" targetRef="wait" />
    <bpmn:intermediateCatchEvent id="wait">
      <bpmn:timerEventDefinition><bpmn:timeDuration>__import__("x")</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:intermediateCatchEvent>
    <bpmn:sequenceFlow id="f3" sourceRef="wait" targetRef="wait2" />
    <bpmn:intermediateCatchEvent id="wait2">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT5M</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:intermediateCatchEvent>
    <bpmn:sequenceFlow id="f4" sourceRef="wait2" targetRef="e1" />
    <bpmn:endEvent id="e1" />
  </bpmn:process>
"""
    data = bpmn(body)
    # without a validator, this deploys fine
    assert list(parse_deployment([("expr.bpmn", data)]).processes) == ["p"]
    issues = refused([("expr.bpmn", data)], script_validator=no_python_import)
    assert len(issues) == 3, issues
    cond = next(i for i in issues if "condition expression" in i.message)
    assert (cond.line, cond.column) == line_col_of(data, '<bpmn:sequenceFlow id="f_evil"')
    assert "sequenceFlow 'f_evil' refused" in cond.message and "__import__" in cond.message
    script = next(i for i in issues if i.message.startswith("script of"))
    assert (script.line, script.column) == line_col_of(data, "<bpmn:scriptTask")
    timer = next(i for i in issues if "timer" in i.message)
    assert (timer.line, timer.column) == line_col_of(data, '<bpmn:intermediateCatchEvent id="wait"')


def test_validator_sees_multi_instance_and_correlation_expressions():
    seen: list[str] = []
    parse_deployment(
        [("roundtrip.bpmn", (FIXTURES / "roundtrip.bpmn").read_bytes()),
         ("priority.dmn", (FIXTURES / "priority.dmn").read_bytes())],
        script_validator=seen.append,
    )
    assert "count" in seen  # loopCardinality
    assert 'priority == "P1"' in seen  # condition
    assert "audited = priority" in seen  # script of the called process
    assert "impact" in seen and '"P1"' in seen  # DMN input expression / output entry


# --------------------------------------------------------------------------------------------------
# MIWG corpus
# --------------------------------------------------------------------------------------------------

MIWG_EXECUTABLE = {
    "C.1.0.bpmn": ["bpmn-miwg-test-case-c.1.0"],
    "C.1.1.bpmn": ["handle-invoice"],
    "C.9.1.bpmn": ["requestDocument_en"],
}
# declared isExecutable="true" but not executable on this engine (imported with strict=False)
MIWG_DEMOTED = {
    "C.3.0.bpmn": ("_8170787a-3207-434d-9bea-4787059f444f", "without a condition"),
    "C.8.1.bpmn": ("VacationRequestProcess", "expression language"),  # FEEL conditions
    "C.9.0.bpmn": ("customer_onboarding_en", "camunda:decisionRef"),
    "C.9.2.bpmn": ("ManualCheck", "multiinstance"),
}
MIWG_FILES = sorted(p.name for p in MIWG.glob("*.bpmn")) if MIWG.is_dir() else []


def test_the_miwg_reference_suite_is_complete():
    if not MIWG.is_dir():
        pytest.skip("MIWG corpus not available")
    assert len(MIWG_FILES) == 21


@pytest.mark.parametrize("name", MIWG_FILES)
def test_miwg_reference_file_imports(name):
    data = (MIWG / name).read_bytes()
    deployment = parse_deployment([(name, data)], strict=False)
    assert isinstance(deployment, ParsedDeployment)
    assert deployment.files[name] == data
    defined = deployment.file_processes[name]
    assert defined and set(defined) == set(deployment.processes) | set(deployment.non_executable)
    assert sorted(deployment.processes) == sorted(MIWG_EXECUTABLE.get(name, []))
    for pid in deployment.processes:
        spec, subs = deployment.specs[pid], deployment.subprocess_specs[pid]
        stored = spec_to_json(spec, subs)
        assert spec_to_json(*spec_from_json(stored)) == stored
    for pid in deployment.non_executable:
        assert deployment.non_executable_reasons[pid]
        assert pid in deployment.non_executable_models
    json.dumps(deployment.as_dict())  # metadata is JSON-serialisable

    if name in MIWG_DEMOTED:
        pid, reason = MIWG_DEMOTED[name]
        assert deployment.non_executable_reasons[pid].startswith("declared executable")
        assert reason in deployment.non_executable_reasons[pid]
        assert deployment.warnings and all(w.line and w.column for w in deployment.warnings)
        # the default (strict) mode refuses them, with a located reason
        issues = refused([(name, data)])
        assert all(i.file == name and i.line and i.column for i in issues)
    else:
        assert not deployment.warnings
        parse_deployment([(name, data)])  # strict mode accepts them too


VENDOR_OK = [
    "bpmn.io_Camunda_Modeler_18.6.1/A.1.0-export.bpmn",
    "bpmn.io_Camunda_Modeler_18.6.1/A.4.1-export.bpmn",
    "bpmn.io_Camunda_Modeler_18.6.1/C.4.0-export.bpmn",
    "SAP_Signavio_Process_Manager_19.9.0/A.2.0-export.bpmn",
    "SAP_Signavio_Process_Manager_19.9.0/C.1.0-export.bpmn",
    "Trisotech_Workflow_Modeler_12.6.3/C.3.0-export.bpmn",
    "ADONIS_17.0/C.2.0-export.bpmn",
    "ARIS_10.2025.07/C.4.0-export.bpmn",
    "Enterprise_Architect_12.0.1207/B.2.0-roundtrip.bpmn",  # windows-1252
    "Yaoqiang_BPMN_Editor_4.0/A.1.0-export.bpmn",
]


@pytest.mark.parametrize("rel", VENDOR_OK)
def test_vendor_exports_import(rel):
    path = VENDORS / rel
    if not path.exists():
        pytest.skip("vendor corpus not available")
    deployment = parse_deployment([(path.name, path.read_bytes())], strict=False)
    assert deployment.file_processes[path.name]


def test_vendor_schema_violation_is_refused_with_location():
    path = VENDORS / "SAP_Signavio_Process_Manager_19.9.0" / "B.1.0-export.bpmn"
    if not path.exists():
        pytest.skip("vendor corpus not available")
    issues = refused([(path.name, path.read_bytes())], strict=False)
    assert [(i.line, i.column) for i in issues] == [(174, 7)]
    assert "calledElement" in issues[0].message


# --------------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------------


def test_camunda_modeler_metadata():
    deployment = parse_deployment(
        [("incident.bpmn", (FIXTURES / "camunda_incident.bpmn").read_bytes())],
        script_validator=no_python_import,
    )
    model = deployment.processes["incident_management"]
    assert model.name == "Incident management"
    assert model.file == "incident.bpmn" and model.is_executable
    assert model.documentation == "Handle an incident from logging to closure."
    assert model.start_form_key == "forms/incident-new.json"
    assert model.start_initiator == "reporter"
    assert model.version_tag == "1.2"
    assert model.candidate_starter_groups == ["service-desk", "customers"]
    assert model.properties == {"iso20000.process": "8.6.1"}
    assert model.signals_thrown == ["major_incident"]
    assert [(t.element_id, t.kind, t.expression, t.literal, t.attached_to, t.interrupting) for t in model.timers] == [
        ("Timer_Sla", "timeDuration", "PT4H", True, "Task_Resolve", False)
    ]

    classify = model.user_tasks["Task_Classify"]
    assert classify.name == "Classify incident"
    assert (classify.lane, classify.lane_id) == ("1st line", "Lane_FirstLine")  # innermost lane
    assert classify.form_key == "forms/classify.json"
    assert classify.candidate_groups == ["service-desk", "first-line"]
    assert classify.due_date == "${classification_due}"
    assert classify.documentation == "Set category, impact and urgency."
    assert classify.properties == {"sla": "PT15M", "kpi": "first_response"}
    assert classify.form_fields[0]["id"] == "impact"
    assert [v["id"] for v in classify.form_fields[0]["values"]] == ["low", "high"]

    resolve = model.user_tasks["Task_Resolve"]
    assert resolve.assignee == "${assigned_engineer}"
    assert resolve.candidate_users == ["alice", "bob"]
    assert resolve.lane == "2nd line"
    assert model.user_tasks["Task_Confirm"].lane == "Customer"

    assert model.activities["Gateway_Priority"] == {
        "name": "Priority?", "type": "exclusiveGateway", "parent": None, "event": None,
        "retry_cycle": None, "properties": {},
    }
    assert model.activities["Timer_Sla"]["event"] == "timer"
    assert model.activities["Script_Close"]["type"] == "scriptTask"

    coll = deployment.collaborations["Collaboration_1"]
    assert coll.participants == [{
        "id": "Participant_ServiceDesk", "name": "Service desk",
        "process_ref": "incident_management", "executable": True,
    }]
    as_json = json.loads(json.dumps(model.as_dict()))
    assert as_json["user_tasks"]["Task_Classify"]["candidate_groups"] == ["service-desk", "first-line"]

    # SpiffWorkflow got the same lane (the innermost one) and form
    spec = deployment.specs["incident_management"]
    assert spec.task_specs["Task_Classify"].form.key == "forms/classify.json"


def test_non_executable_reasons():
    body = SIMPLE_PROCESS.replace('id="simple" isExecutable="true"', 'id="draft"') + SIMPLE_PROCESS.replace(
        'id="simple" isExecutable="true"', 'id="off" isExecutable="false"'
    ).replace('"s1"', '"s2"').replace('"t1"', '"t2"').replace('"e1"', '"e2"').replace('"f1"', '"f3"').replace(
        '"f2"', '"f4"'
    )
    deployment = parse_deployment([("ne.bpmn", bpmn(body))])
    assert deployment.processes == {}
    assert deployment.non_executable == ["draft", "off"]
    assert deployment.non_executable_reasons == {
        "draft": "isExecutable attribute missing",
        "off": 'isExecutable="false"',
    }


# --------------------------------------------------------------------------------------------------
# spec serialisation
# --------------------------------------------------------------------------------------------------


def _run(spec, subprocess_specs, data):
    workflow = BpmnWorkflow(spec, subprocess_specs)
    for task in workflow.get_tasks(state=TaskState.READY):
        task.data.update(data)
    workflow.do_engine_steps()
    trail = []
    while not workflow.is_completed():
        ready = workflow.get_tasks(state=TaskState.READY, manual=True)
        assert ready, "workflow is stuck"
        trail.append(ready[0].task_spec.bpmn_id)
        ready[0].run()
        workflow.do_engine_steps()
    completed = sorted(t.task_spec.name for t in workflow.get_tasks(state=TaskState.COMPLETED))
    return trail, dict(workflow.data), completed


def test_spec_json_round_trip_runs_identically():
    deployment = parse_deployment([
        ("roundtrip.bpmn", (FIXTURES / "roundtrip.bpmn").read_bytes()),
        ("priority.dmn", (FIXTURES / "priority.dmn").read_bytes()),
    ])
    spec, subs = deployment.specs["triage"], deployment.subprocess_specs["triage"]
    assert sorted(subs) == ["Review", "audit"]
    stored = spec_to_json(spec, subs)
    spec2, subs2 = spec_from_json(stored)
    assert spec_to_json(spec2, subs2) == stored
    for data in ({"impact": "HIGH", "urgency": "high"}, {"impact": "high", "urgency": "low"}, {"impact": "low"}):
        data.setdefault("urgency", "low")
        original = _run(spec, subs, data)
        restored = _run(spec2, subs2, data)
        assert original == restored
    assert original[0] == ["Handle", "Handle"]  # multi-instance (cardinality 2)
    assert original[1]["priority"] == "P4" and original[1]["audited"] == "P4"  # DMN + call activity
    with pytest.raises(ValueError):
        spec_from_json(json.dumps({"format": "something else"}))


# --------------------------------------------------------------------------------------------------
# call activities and lenient (interchange) mode
# --------------------------------------------------------------------------------------------------

CALLER = """  <bpmn:process id="caller" isExecutable="true">
    <bpmn:startEvent id="cs" />
    <bpmn:sequenceFlow id="cf1" sourceRef="cs" targetRef="call" />
    <bpmn:callActivity id="call" calledElement="callee" />
    <bpmn:sequenceFlow id="cf2" sourceRef="call" targetRef="ce" />
    <bpmn:endEvent id="ce" />
  </bpmn:process>
"""
CALLEE = """  <bpmn:process id="callee" isExecutable="true">
    <bpmn:startEvent id="ks" />
    <bpmn:sequenceFlow id="kf1" sourceRef="ks" targetRef="kscript" />
    <bpmn:scriptTask id="kscript"><bpmn:script>x = __import__("os")</bpmn:script></bpmn:scriptTask>
    <bpmn:sequenceFlow id="kf2" sourceRef="kscript" targetRef="ke" />
    <bpmn:endEvent id="ke" />
  </bpmn:process>
"""


def test_call_to_a_non_executable_process_is_located_at_the_call_activity():
    data = bpmn(CALLER + CALLEE.replace('isExecutable="true"', 'isExecutable="false"'))
    issues = refused([("calls.bpmn", data)])
    assert len(issues) == 1
    assert (issues[0].line, issues[0].column) == line_col_of(data, "<bpmn:callActivity")
    assert "called process 'callee' is not executable" in issues[0].message


def test_lenient_mode_demotes_a_refused_process_and_its_callers():
    caller, callee = bpmn(CALLER), bpmn(CALLEE)
    files = [("caller.bpmn", caller), ("callee.bpmn", callee), ("ok.bpmn", bpmn(SIMPLE_PROCESS))]
    # strict: every problem, across files
    issues = refused(files, script_validator=no_python_import)
    assert {(i.file, i.line) for i in issues} == {
        ("callee.bpmn", line_col_of(callee, "<bpmn:scriptTask")[0]),
        ("caller.bpmn", line_col_of(caller, "<bpmn:callActivity")[0]),
    }
    deployment = parse_deployment(files, script_validator=no_python_import, strict=False)
    assert list(deployment.processes) == ["simple"]
    assert deployment.non_executable == ["caller", "callee"]
    assert "__import__" in deployment.non_executable_reasons["callee"]
    assert "calls process 'callee'" in deployment.non_executable_reasons["caller"]
    assert set(deployment.specs) == {"simple"}
    assert len(deployment.warnings) == 2


def test_message_tasks_and_events_run_and_persist():
    body = """  <bpmn:message id="m" name="reply" />
  <bpmn:process id="msg" isExecutable="true">
    <bpmn:startEvent id="s1" />
    <bpmn:sequenceFlow id="f1" sourceRef="s1" targetRef="throw" />
    <bpmn:intermediateThrowEvent id="throw"><bpmn:messageEventDefinition messageRef="m" /></bpmn:intermediateThrowEvent>
    <bpmn:sequenceFlow id="f2" sourceRef="throw" targetRef="svc" />
    <bpmn:serviceTask id="svc" name="Call CMDB" camunda:type="external" camunda:topic="cmdb" />
    <bpmn:sequenceFlow id="f3" sourceRef="svc" targetRef="recv" />
    <bpmn:receiveTask id="recv" messageRef="m" />
    <bpmn:sequenceFlow id="f4" sourceRef="recv" targetRef="e1" />
    <bpmn:endEvent id="e1" />
  </bpmn:process>
"""
    deployment = parse_deployment([("msg.bpmn", bpmn(body))])
    model = deployment.processes["msg"]
    assert model.messages_thrown == ["reply"] and model.messages_caught == ["reply"]
    spec, subs = spec_from_json(spec_to_json(deployment.specs["msg"], deployment.subprocess_specs["msg"]))
    workflow = BpmnWorkflow(spec, subs)
    workflow.do_engine_steps()  # the message throw (no camunda:expression) does not crash
    started = [t.task_spec.bpmn_id for t in workflow.get_tasks(state=TaskState.STARTED)]
    assert started == ["svc"]  # service tasks wait for the engine to complete them
