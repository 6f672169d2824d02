"""Camunda 7 Modeler dialect: the JUEL subset translator, dialect problems as located deploy errors, and a
process saved the way Camunda Modeler saves it, deployed and run end to end over the HTTP API."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from itsmflow.api.app import create_app
from itsmflow.engine.bpmn import parse_deployment
from itsmflow.engine.bpmn.juel import JuelError, is_juel, translate
from itsmflow.engine.errors import DeploymentInvalid
from itsmflow.engine.sandbox.environment import check_expression, evaluate_expression
from itsmflow.engine.errors import SandboxViolation

FIXTURE = Path(__file__).parent / "fixtures" / "camunda" / "purchase_request.bpmn"
PURCHASE = FIXTURE.read_bytes()


# -- the translator -------------------------------------------------------------------------------------
@pytest.mark.parametrize("juel, variables, expected", [
    ("${approved}", {"approved": True}, True),
    ("${approved}", {"approved": False}, False),
    ("${!rejected}", {"rejected": False}, True),
    ("${not rejected}", {"rejected": True}, False),
    ("${amount > 1000 && region == 'EU'}", {"amount": 1500, "region": "EU"}, True),
    ("${amount > 1000 && region == 'EU'}", {"amount": 1500, "region": "US"}, False),
    ("${amount > 1000 && region == 'EU'}", {"amount": 999, "region": "EU"}, False),
    ("${amount gt 1000 and region eq 'EU'}", {"amount": 1001, "region": "EU"}, True),
    ('${x == "a"}', {"x": "a"}, True),
    ('${x != "a"}', {"x": "a"}, False),
    ("${empty list}", {"list": []}, True),
    ("${empty list}", {"list": ["x"]}, False),
    ("${empty list}", {"list": None}, True),
    ("${empty name}", {"name": ""}, True),
    ("${empty n}", {"n": 0}, False),  # JUEL: a number is never empty
    ("${not empty items}", {"items": {"a": 1}}, True),
    ("#{a || b && c}", {"a": False, "b": True, "c": False}, False),  # && binds tighter than ||
    ("${(a || b) && c}", {"a": True, "b": False, "c": False}, False),
    ("${x le 3 ? 'small' : 'big'}", {"x": 3}, "small"),
    ("${x le 3 ? 'small' : 'big'}", {"x": 4}, "big"),
    ("${order.total * 2 >= 10 div 2}", {"order": {"total": 3}}, True),
    ("${lines[1].qty mod 2 == 1}", {"lines": [{"qty": 2}, {"qty": 5}]}, True),
    ("${customer['tier'] == 'gold'}", {"customer": {"tier": "gold"}}, True),
    ("${-a + 1.5e1 - b}", {"a": 2, "b": 3}, 10.0),
    ("${count == null}", {"count": None}, True),
    ("${'it\\'s' == s}", {"s": "it's"}, True),
    ("${true && !false}", {}, True),
])
def test_juel_subset_translates_to_the_same_result(juel, variables, expected):
    python = translate(juel)
    check_expression(python, mode="eval")  # the same deploy-time check as every other expression
    assert evaluate_expression(python, variables) == expected


def test_unknown_variable_fails_even_when_it_shadows_a_builtin():
    # `list` unset must not silently become Python's builtin list (JUEL raises on unknown identifiers)
    python = translate("${empty list}")
    with pytest.raises(Exception, match="unknown variable list"):
        evaluate_expression(python, {})
    with pytest.raises(Exception, match="approved"):
        evaluate_expression(translate("${approved}"), {})


@pytest.mark.parametrize("juel, message", [
    ("Total: ${amount}", "composite"),
    ("${a} ${b}", "exactly one"),
    ("${list.size() > 0}", "method calls are not supported"),
    ("${fn:length(x) > 0}", "functions are not supported"),
    ("${execution.getVariable('x')}", "context object 'execution'"),
    ("${task.assignee}", "context object 'task'"),
    ("${x = 1}", "assignment is not supported"),
    ("${x -> x}", "lambda"),
    ("${a += 'b'}", "concatenation"),
    ("${a; b}", "sequences"),
    ("${a instanceof b}", "instanceof"),
    ("${__import__}", "starting with '_'"),
    ("${_secret}", "starting with '_'"),
    ("${class == 1}", "reserved word"),
    ("${a +}", "expected a value"),
    ("${'unterminated}", "exactly one"),
    ("${'bad \\n escape'}", "unsupported escape"),
    ("${a @ b}", "unexpected character"),
    ("${}", "empty expression"),
    ("${isinstance}", "builtin of the expression sandbox"),
    ("${x > 1e999}", "out of range"),  # not the name ``inf``
])
def test_juel_outside_the_subset_is_refused(juel, message):
    with pytest.raises(JuelError) as info:
        translate(juel)
    assert message in str(info.value)


def test_translation_cannot_reach_dunders_or_builtins():
    # property syntax becomes a key lookup on data, never an attribute access
    python = translate("${x.__class__}")
    assert "__class__" in python and "." not in python.replace("'__class__'", "")
    check_expression(python, mode="eval")
    with pytest.raises(Exception):
        evaluate_expression(python, {"x": "text"})  # str has no keys: fails, reaches nothing
    with pytest.raises(SandboxViolation):
        check_expression("x.__class__", mode="eval")  # what a naive translation would produce


def test_deeply_nested_juel_is_refused_not_a_crash():
    with pytest.raises(JuelError, match="nested too deeply"):
        translate("${" + "(" * 200 + "a" + ")" * 200 + "}")


# -- deploy-time problems are located at the element ------------------------------------------------------
def _line_of(data: bytes, needle: str) -> int:
    return data.decode("utf-8")[: data.decode("utf-8").index(needle)].count("\n") + 1


def _refused(data: bytes) -> list:
    with pytest.raises(DeploymentInvalid) as info:
        parse_deployment([("purchase.bpmn", data)], script_validator=check_expression)
    return info.value.issues


@pytest.mark.parametrize("original, replacement, message, owner", [
    ("${approved}</bpmn:conditionExpression>", "${approved.size() &gt; 0}</bpmn:conditionExpression>",
     "method calls are not supported", "Flow_Approved"),
    ("${!approved}", "Rejected: ${!approved}", "composite", "Flow_Rejected"),
    ("<bpmn:timeDuration xsi:type=\"bpmn:tFormalExpression\">PT48H",
     "<bpmn:timeDuration xsi:type=\"bpmn:tFormalExpression\">${execution.dueIn}", "context object", "Timer_Chase"),
])
def test_unsupported_juel_is_a_deploy_error_at_the_element(original, replacement, message, owner):
    data = PURCHASE.replace(original.encode(), replacement.encode(), 1)
    assert data != PURCHASE
    issues = _refused(data)
    assert len(issues) == 1, issues
    issue = issues[0]
    assert issue.file == "purchase.bpmn" and message in issue.message, issue
    assert issue.line is not None and issue.column is not None
    assert owner in issue.message
    # the line of the element's start tag
    needle = {"Flow_Approved": '<bpmn:sequenceFlow id="Flow_Approved"', "Flow_Rejected": '<bpmn:sequenceFlow id="Flow_Rejected"',
              "Timer_Chase": '<bpmn:boundaryEvent id="Timer_Chase"'}[owner]
    assert issue.line == _line_of(data, needle)


def test_unsupported_input_output_and_form_fields_are_deploy_errors():
    data = PURCHASE.replace(
        b'<camunda:inputParameter name="limit">${1000}</camunda:inputParameter>',
        b'<camunda:inputParameter name="limit"><camunda:script scriptFormat="groovy">1000</camunda:script>'
        b'</camunda:inputParameter>',
    ).replace(b'id="comment" label="Comment" type="string"', b'id="comment" label="Comment" type="file"')
    issues = _refused(data)
    messages = sorted(i.message for i in issues)
    assert len(messages) == 2, messages
    assert "script values are not supported" in messages[1] and "limit" in messages[1]
    assert "type 'file' is not supported" in messages[0]
    assert {i.line for i in issues} == {_line_of(data, '<camunda:inputParameter name="limit">'),
                                        _line_of(data, 'id="comment"')}


def test_explicit_script_language_conditions_are_refused():
    data = PURCHASE.replace(b'<bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">${approved}',
                            b'<bpmn:conditionExpression xsi:type="bpmn:tFormalExpression" language="javascript">'
                            b'approved')
    issues = _refused(data)
    assert any("expression language 'javascript' is not supported" in i.message for i in issues), issues


def test_modeler_file_metadata_and_execution_copy():
    deployment = parse_deployment([("purchase.bpmn", PURCHASE)], script_validator=check_expression)
    model = deployment.processes["purchase_request"]
    assert model.user_tasks["Task_Review"].candidate_groups == ["manager"]
    assert model.user_tasks["Task_Compliance"].candidate_users == ["wes", "wanda"]
    assert model.user_tasks["Task_Compliance"].form_key == "embedded:app:forms/compliance.html"
    assert model.user_tasks["Task_Notify"].assignee == "${initiator}"
    assert [f["id"] for f in model.start_form_fields] == ["amount", "region", "description"]
    # the timer metadata keeps the value as written (timer start jobs read it)
    assert [(t.element_id, t.expression, t.literal) for t in model.timers] == [
        ("Timer_Chase", "PT48H", True), ("Timer_CoolOff", "PT1H", True)]
    spec = deployment.specs["purchase_request"]
    conditions = {c.args[0] for c, _ in spec.task_specs["Gateway_Compliance"].cond_task_specs if c is not None}
    assert conditions == {"((amount > 1000) and (region == 'EU'))"}
    assert spec.task_specs["Timer_CoolOff"].event_definition.expression == "'PT1H'"
    review = spec.task_specs["Task_Review"]
    assert review.io_inputs == [("limit", "1000"), ("reviewer_hint", "'Check the budget line first'")]
    assert review.io_outputs[1] == ("overLimit", "(amount > limit)")
    assert deployment.files["purchase.bpmn"] == PURCHASE


# -- end to end over the HTTP API -----------------------------------------------------------------------
def H(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer t-{user}"}


@pytest.fixture
def client(settings, directory):
    from itsmflow.engine.core import Engine

    engine = Engine(settings, directory)
    with TestClient(create_app(engine)) as c:
        c.engine = engine
        yield c
    engine.close()


@pytest.fixture
def deployed(client):
    resp = client.post("/api/deployments", headers=H("root"), data={"name": "purchasing"},
                       files=[("files", ("purchase_request.bpmn", PURCHASE, "application/xml"))])
    assert resp.status_code == 201, resp.text
    return client


def _start(client, user="rita", **variables):
    resp = client.post("/api/process-definitions/key/purchase_request/start", headers=H(user),
                       json={"variables": variables})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _open(client, iid):
    resp = client.get("/api/tasks", headers=H("root"), params={"processInstanceId": iid})
    assert resp.status_code == 200, resp.text
    return {t["taskDefinitionKey"]: t for t in resp.json()}


def _complete(client, task, user, **variables):
    return client.post(f"/api/tasks/{task['id']}/complete", headers=H(user), json={"variables": variables})


def _instance(client, iid):
    resp = client.get(f"/api/process-instances/{iid}", headers=H("root"))
    assert resp.status_code == 200
    return resp.json()


def _fire_timers(client) -> int:
    with client.engine.db.begin() as conn:
        conn.execute(text("UPDATE job SET due_at = :t WHERE job_type = 'timer'"),
                     {"t": datetime(2000, 1, 1, tzinfo=timezone.utc)})
    return client.engine.jobs.run_due()


def _visited(client, iid) -> set[str]:
    events = client.get(f"/api/process-instances/{iid}/history", headers=H("root")).json()
    return {e["activityId"] for e in events if e["activityId"]}


def test_xml_returned_is_the_uploaded_xml_with_unknown_extensions(deployed):
    definition = deployed.get("/api/process-definitions/key/purchase_request", headers=H("rita")).json()
    xml = deployed.get(f"/api/process-definitions/{definition['id']}/xml", headers=H("rita"))
    assert xml.status_code == 200 and xml.content == PURCHASE
    for kept in (b"<zeebe:header key=\"channel\"", b"acme:costCentre=\"CC-42\"", b"camunda:asyncBefore=\"true\"",
                 b"modeler:executionPlatformVersion", b"${amount &gt; 1000 &amp;&amp; region == 'EU'}"):
        assert kept in xml.content


def test_start_form_from_form_fields(deployed):
    form = deployed.get("/api/process-definitions/key/purchase_request/form", headers=H("rita")).json()
    assert form["schema"]["required"] == ["amount"]
    assert form["schema"]["properties"]["region"]["enum"] == ["EU", "US", "APAC"]
    assert form["uiSchema"]["region"]["ui:enumNames"] == ["Europe", "United States", "Asia-Pacific"]
    bad = deployed.post("/api/process-definitions/key/purchase_request/start", headers=H("rita"),
                        json={"variables": {"amount": "lots", "region": "MARS", "colour": "red"}})
    assert bad.status_code == 422, bad.text
    paths = {e["path"] for e in bad.json()["errors"]}
    assert {"$.amount", "$.region", "$.colour"} <= paths


def test_large_eu_purchase_goes_through_compliance_and_express(deployed):
    c = deployed
    iid = _start(c, amount=1500, region="EU", description="Laptops")
    tasks = _open(c, iid)
    assert list(tasks) == ["Task_Review"]
    review = tasks["Task_Review"]
    assert review["candidateRoles"] == ["manager"]
    # camunda:formField form of the task: validated (422) before anything changes
    assert c.get(f"/api/tasks/{review['id']}/form", headers=H("mona")).json()["schema"]["required"] == ["approved"]
    assert _complete(c, review, "mona", approved="yes").status_code == 422
    assert _complete(c, review, "wes").status_code == 403  # not a manager
    assert _complete(c, review, "mona", approved=True, comment="").status_code == 200

    variables = _instance(c, iid)["variables"]
    assert variables["reviewNote"] == "none" and variables["overLimit"] is True  # camunda:outputParameter
    assert "limit" not in variables and "reviewer_hint" not in variables  # inputs are local to the task
    tasks = _open(c, iid)
    assert list(tasks) == ["Task_Compliance"]  # ${amount > 1000 && region == 'EU'}
    compliance = tasks["Task_Compliance"]
    assert compliance["formKey"] == "embedded:app:forms/compliance.html"
    assert _complete(c, compliance, "mona").status_code == 403  # candidateUsers: wes, wanda
    assert _complete(c, compliance, "wanda").status_code == 200

    order = _open(c, iid)["Task_Order"]
    assert order["candidateRoles"] == ["worker"]
    # the unquoted PT48H boundary timer is waiting: firing it chases without cancelling the order
    assert _fire_timers(c) == 1
    assert set(_open(c, iid)) == {"Task_Order", "Task_Chase"}
    assert _complete(c, order, "wes", priority="high").status_code == 200
    assert _instance(c, iid)["state"] == "active"  # PT1H cool-off (unquoted) is waiting
    assert _fire_timers(c) == 1
    assert "End_Express" in _visited(c, iid) and "End_Ordered" not in _visited(c, iid)


def test_small_purchase_skips_compliance_and_rejection_goes_to_the_initiator(deployed):
    c = deployed
    small = _start(c, amount=500, region="EU")
    assert _complete(c, _open(c, small)["Task_Review"], "max", approved=True).status_code == 200
    assert list(_open(c, small)) == ["Task_Order"]  # default flow: not > 1000
    assert _complete(c, _open(c, small)["Task_Order"], "wes", priority="normal").status_code == 200
    assert _fire_timers(c) == 1
    assert _instance(c, small)["state"] == "completed"
    assert "End_Ordered" in _visited(c, small) and "End_Express" not in _visited(c, small)

    us = _start(c, amount=5000, region="US")
    assert _complete(c, _open(c, us)["Task_Review"], "mona", approved=True).status_code == 200
    assert list(_open(c, us)) == ["Task_Order"]  # large, but not EU

    rejected = _start(c, "rita", amount=2000, region="EU")
    assert _complete(c, _open(c, rejected)["Task_Review"], "mona", approved=False,
                     comment="no budget").status_code == 200
    notify = _open(c, rejected)
    assert list(notify) == ["Task_Notify"]  # ${!approved}
    assert notify["Task_Notify"]["assignee"] == "rita"  # camunda:assignee="${initiator}"
    assert _complete(c, notify["Task_Notify"], "rita").status_code == 200
    inst = _instance(c, rejected)
    assert inst["state"] == "completed" and inst["variables"]["reviewNote"] == "no budget"
    assert "End_Rejected" in _visited(c, rejected)


def test_failing_output_mapping_refuses_the_completion_and_changes_nothing(client):
    data = PURCHASE.replace(b"${empty comment ? 'none' : comment}", b"${reviewedBy}")
    resp = client.post("/api/deployments", headers=H("root"), data={"name": "purchasing"},
                       files=[("files", ("purchase_request.bpmn", data, "application/xml"))])
    assert resp.status_code == 201, resp.text
    iid = _start(client, amount=10, region="US")
    review = _open(client, iid)["Task_Review"]
    resp = _complete(client, review, "mona", approved=True)
    assert resp.status_code == 422, resp.text
    assert "camunda:outputParameter of Task_Review" in resp.json()["detail"]
    assert "reviewedBy" in resp.json()["detail"]
    assert list(_open(client, iid)) == ["Task_Review"]  # still open, nothing changed
    assert "approved" not in _instance(client, iid)["variables"]


def test_an_explicit_python_expression_is_not_juel():
    assert is_juel("${approved}") and is_juel("approved", "juel")
    assert not is_juel("x == '${a}'", "python")


SHADOW = b"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="d" targetNamespace="http://example.org/io">
  <bpmn:process id="io_shadow" isExecutable="true">
    <bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="check"/>
    <bpmn:userTask id="check" name="Check" camunda:candidateGroups="worker">
      <bpmn:extensionElements>
        <camunda:inputOutput>
          <camunda:inputParameter name="amount">${amount * 2}</camunda:inputParameter>
          <camunda:outputParameter name="doubled">${amount}</camunda:outputParameter>
        </camunda:inputOutput>
      </bpmn:extensionElements>
    </bpmn:userTask>
    <bpmn:sequenceFlow id="f2" sourceRef="check" targetRef="next"/>
    <bpmn:userTask id="next" name="Next" camunda:candidateGroups="worker"/>
    <bpmn:sequenceFlow id="f3" sourceRef="next" targetRef="done"/>
    <bpmn:endEvent id="done"/>
  </bpmn:process>
</bpmn:definitions>
"""


def test_an_input_parameter_shadows_a_process_variable_only_inside_its_activity(engine):
    """As in Camunda: the input parameter is local to the activity; the process variable it shadows is kept."""
    engine.repository.deploy("io", [("io_shadow.bpmn", SHADOW)])
    wes = engine.directory.get("wes").principal()
    inst = engine.runtime.start("io_shadow", variables={"amount": 5}, principal=engine.directory.get("rita").principal())
    [task] = engine.tasks.query(process_instance_id=inst.id)[0]
    result = engine.tasks.complete(task.id, wes, {})
    assert result.process_instance.variables["doubled"] == 10
    assert result.process_instance.variables["amount"] == 5
