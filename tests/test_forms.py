"""JSON-Schema forms: submissions validated (draft 2020-12) before anything changes, unknown keys refused,
422 with JSON paths; the task and start form endpoints."""

from __future__ import annotations

import pytest

from itsmflow.engine.errors import ValidationFailed
from itsmflow.engine.forms import Form

from .packutil import RFC, H, complete, consult, drive_to, ok, problem, start, task


def state_of(client, iid):
    inst = ok(client.get(f"/api/process-instances/{iid}", headers=H("root")))
    history = ok(client.get(f"/api/process-instances/{iid}/history", headers=H("root")))
    tasks = ok(client.get("/api/tasks", headers=H("root"), params={"processInstanceId": iid}))
    return inst, history, tasks


@pytest.mark.parametrize("variables, errors", [
    ({}, [("$.decision", "is required")]),
    ({"decision": "rejected"}, [("$.reason", "is required")]),
    ({"decision": "maybe"}, [("$.decision", "'maybe' is not one of ['approved', 'rejected']")]),
    ({"decision": "approved", "reason": ""}, [("$.reason", "'' should be non-empty")]),
    ({"decision": "approved", "approvedBudget": 10, "x": 1},
     [("$.approvedBudget", "unknown field: form 'mini_approval' does not declare it"),
      ("$.x", "unknown field: form 'mini_approval' does not declare it")]),
])
def test_invalid_submission_is_422_with_paths_and_leaves_the_instance_untouched(mini_client, variables, errors):
    iid = drive_to(mini_client, "authorise")
    authorise = task(mini_client, iid, "authorise")
    before = state_of(mini_client, iid)
    body = problem(complete(mini_client, authorise["id"], "alma", variables), 422)
    assert [(e["path"], e["message"]) for e in body["errors"]] == errors
    assert state_of(mini_client, iid) == before  # history, variables, tasks: unchanged
    assert task(mini_client, iid, "authorise")["state"] == "open"
    ok(complete(mini_client, authorise["id"], "alma", {"decision": "rejected", "reason": "too risky"}))
    inst = ok(mini_client.get(f"/api/process-instances/{iid}", headers=H("root")))
    assert inst["state"] == "completed" and inst["variables"]["reason"] == "too risky"


def test_nested_paths_and_types(mini_client):
    iid = drive_to(mini_client, "test")
    test = task(mini_client, iid, "test")
    body = problem(complete(mini_client, test["id"], "tess", {
        "outcome": "successful", "evidence": [{"name": "a", "passed": True}, {"passed": "yes", "extra": 1}]}), 422)
    assert sorted(e["path"] for e in body["errors"]) == ["$.evidence[1].extra", "$.evidence[1].name",
                                                         "$.evidence[1].passed"]


def test_only_declared_fields_are_written_and_read_only_fields_stay(mini_client):
    iid = start(mini_client)["id"]
    classify = task(mini_client, iid, "classify")
    ok(consult(mini_client, classify["id"], "cora"), 201)
    form = ok(mini_client.get(f"/api/tasks/{classify['id']}/form", headers=H("mike")))
    assert form["schema"]["required"] == ["category"]
    assert form["data"] == {"summary": RFC["summary"]}  # current values of the form's fields only
    assert "uiSchema" not in form
    # a client echoing the read-only value unchanged is fine; changing it is not
    body = problem(complete(mini_client, classify["id"], "mike", {"category": "major", "summary": "changed"}), 422)
    assert body["errors"] == [{"path": "$.summary", "message": "read-only field: it cannot be changed"}]
    ok(complete(mini_client, classify["id"], "mike", {"category": "major", "summary": RFC["summary"]}))
    variables = ok(mini_client.get(f"/api/process-instances/{iid}", headers=H("root")))["variables"]
    assert variables["category"] == "major" and variables["summary"] == RFC["summary"]


def test_start_form_is_served_and_enforced(mini_client, mini_engine):
    form = ok(mini_client.get("/api/process-definitions/key/mini_change/form", headers=H("ivan")))
    assert form["schema"]["title"] == "Raise a change"
    assert form["uiSchema"]["ui:order"] == ["summary", "risk", "plannedStart"]
    url = "/api/process-definitions/key/mini_change/start"
    for variables, paths in [
        ({}, ["$.risk", "$.summary"]),
        ({"summary": "ok summary", "risk": "medium"}, ["$.risk"]),
        ({"summary": "ok summary", "risk": "low", "plannedStart": "tomorrow"}, ["$.plannedStart"]),
        ({"summary": "ok summary", "risk": "low", "sneaky": True}, ["$.sneaky"]),
        ({"summary": "ok summary", "risk": "low", "policies": {"testing": {"required": False}}}, ["$.policies"]),
    ]:
        body = problem(mini_client.post(url, headers=H("ivan"), json={"variables": variables, "businessKey": "X"}), 422)
        assert sorted(e["path"] for e in body["errors"]) == paths, body
    assert ok(mini_client.get("/api/process-instances", headers=H("root"))) == []  # nothing was started
    inst = ok(mini_client.post(url, headers=H("ivan"), json={"variables": {
        **RFC, "plannedStart": "2030-05-01T08:00:00Z"}}), 201)
    assert inst["variables"]["plannedStart"] == "2030-05-01T08:00:00Z"
    # a process without a start form: the empty schema
    from .conftest import fixture_bytes

    mini_engine.repository.deploy("ten", [("ten_steps.bpmn", fixture_bytes("ten_steps.bpmn"))])
    assert ok(mini_client.get("/api/process-definitions/key/ten_steps/form", headers=H("ivan"))) == {
        "schema": {"type": "object", "properties": {}}}
    problem(mini_client.get("/api/process-definitions/key/nope/form", headers=H("ivan")), 404)


def test_task_form_of_a_task_without_a_pack(mini_client, mini_engine):
    from .conftest import fixture_bytes

    mini_engine.repository.deploy("ten", [("ten_steps.bpmn", fixture_bytes("ten_steps.bpmn"))])
    inst = mini_engine.runtime.start("ten_steps", variables={"amount": 5})
    t = mini_engine.tasks.query(process_instance_id=inst.id)[0][0]
    form = ok(mini_client.get(f"/api/tasks/{t.id}/form", headers=H("root")))
    assert form == {"schema": {"type": "object", "properties": {}}, "data": {"amount": 5}}
    problem(mini_client.get("/api/tasks/nope/form", headers=H("root")), 404)


def test_form_unit_behaviour():
    form = Form("f", {"type": "object", "properties": {"a": {"type": "integer"}, "b c": {"type": "string"}},
                      "required": ["a"]})
    assert form.validate({"a": 1}) == {"a": 1}
    with pytest.raises(ValidationFailed) as exc:
        form.validate({"a": "1", "b c": 2, "zz": None})
    assert [(i.path, i.message) for i in exc.value.errors] == [
        ("$.zz", "unknown field: form 'f' does not declare it"),
        ("$.a", "'1' is not of type 'integer'"),
        ('$["b c"]', "2 is not of type 'string'"),
    ]
