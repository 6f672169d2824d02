"""Messages, signals and incident retry over HTTP (POST /api/messages, /api/signals, /api/incidents/{id}/retry)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from itsmflow.api.app import create_app
from itsmflow.engine.core import Engine

from .conftest import fixture_bytes
from .test_api import ADMIN, H, problem


@pytest.fixture
def client(settings, directory):
    settings.default_retries = 0
    engine = Engine(settings, directory)
    with TestClient(create_app(engine)) as c:
        for name in ("conversation.bpmn", "timers.bpmn", "ten_steps.bpmn"):
            r = c.post("/api/deployments", headers=ADMIN, data={"name": name},
                       files=[("files", (name, fixture_bytes(name), "application/xml"))])
            assert r.status_code == 201, r.text
        yield c
    engine.close()


def tasks_of(client, instance_id):
    r = client.get("/api/tasks", headers=ADMIN, params={"processInstanceId": instance_id})
    return r.json()


def complete_key(client, instance_id, key, user, variables):
    task = next(t for t in tasks_of(client, instance_id) if t["taskDefinitionKey"] == key)
    r = client.post(f"/api/tasks/{task['id']}/complete", headers=H(user), json={"variables": variables})
    assert r.status_code == 200, r.text
    return r.json()


def test_message_before_receiver_is_buffered_then_delivered_once(client):
    body = {"messageName": "reply", "correlationKeys": {"prop_cid": "C7"}, "variables": {"answer": "42"}}
    problem(client.post("/api/messages", headers=H("rita"), json=body), 404)
    r = client.post("/api/messages", headers=H("rita"), json={**body, "messageId": "msg-7", "ttlSeconds": 60})
    assert r.status_code == 202 and r.json()["buffered"] is True and r.json()["duplicate"] is False
    again = client.post("/api/messages", headers=H("rita"), json={**body, "messageId": "msg-7", "ttlSeconds": 60})
    assert again.status_code == 202 and again.json()["duplicate"] is True

    inst = client.post("/api/process-definitions/key/requester/start", headers=H("rita"),
                       json={"businessKey": "REQ-7"}).json()
    done = complete_key(client, inst["id"], "prepare", "rita", {"conversation_id": "C7"})
    # the request started a responder (message start event); the buffered reply was delivered
    assert [t["taskDefinitionKey"] for t in done["nextTasks"]] == ["read_reply"]
    assert done["processInstance"]["variables"]["answer"] == "42"
    responders = client.get("/api/process-instances", headers=ADMIN, params={"definitionKey": "responder"}).json()
    assert len(responders) == 1
    history = client.get(f"/api/process-instances/{inst['id']}/history", headers=ADMIN).json()
    assert [e["type"] for e in history].count("buffered_message_delivered") == 1


def test_message_to_waiting_instance_by_business_key_and_idempotency(client):
    inst = client.post("/api/process-definitions/key/racing/start", headers=H("rita"),
                       json={"businessKey": "RACE-1"}).json()
    body = {"messageName": "go", "businessKey": "RACE-1", "variables": {"why": "ready"}, "messageId": "go-1"}
    r = client.post("/api/messages", headers=H("rita"), json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"correlated": [{"processInstanceId": inst["id"], "activityId": "got_go"}],
                        "started": [], "duplicate": False}
    r2 = client.post("/api/messages", headers=H("rita"), json=body)
    assert r2.status_code == 200 and r2.json()["duplicate"] is True
    assert r2.json()["correlated"] == r.json()["correlated"]
    state = client.get(f"/api/process-instances/{inst['id']}", headers=ADMIN).json()
    assert state["variables"]["why"] == "ready"
    assert [a["activityId"] for a in state["activeActivities"]] == ["on_message"]
    problem(client.post("/api/messages", headers=H("rita"), json={"messageName": ""}), 422)
    problem(client.post("/api/messages", headers=H("rita"), json={"messageName": "go", "ttlSeconds": -1}), 422)
    problem(client.post("/api/messages", json=body), 401)


def test_signal_reaches_all_waiting_instances(client):
    ids = [client.post("/api/process-definitions/key/alarmed/start", headers=H("rita"), json={}).json()["id"]
           for _ in range(2)]
    r = client.post("/api/signals", headers=H("wes"), json={"name": "alarm", "variables": {"level": 3}})
    assert r.status_code == 200 and r.json() == {"triggered": 2}
    for iid in ids:
        inst = client.get(f"/api/process-instances/{iid}", headers=ADMIN).json()
        assert [a["activityId"] for a in inst["activeActivities"]] == ["react"]
    assert client.post("/api/signals", headers=H("wes"), json={"name": "alarm"}).json() == {"triggered": 0}


def test_incident_listed_and_retried_with_fixed_data(client):
    inst = client.post("/api/process-definitions/key/ten_steps/start", headers=H("rita"), json={}).json()
    done = complete_key(client, inst["id"], "record", "rita", {"amount_typo": 1})
    assert len(done["processInstance"]["incidents"]) == 1
    incidents = client.get("/api/incidents", headers=ADMIN, params={"processInstanceId": inst["id"]}).json()
    assert len(incidents) == 1 and incidents[0]["activityId"] == "score"
    incident_id = incidents[0]["id"]
    problem(client.post(f"/api/incidents/{incident_id}/retry", headers=H("rita"), json={}), 403)
    problem(client.post("/api/incidents/nope/retry", headers=ADMIN, json={}), 404)
    r = client.post(f"/api/incidents/{incident_id}/retry", headers=ADMIN, json={"variables": {"amount": 7}})
    assert r.status_code == 204, r.text
    assert client.get("/api/incidents", headers=ADMIN).json() == []
    state = client.get(f"/api/process-instances/{inst['id']}", headers=ADMIN).json()
    assert state["variables"]["priority"] == "low" and state["incidents"] == []
    problem(client.post(f"/api/incidents/{incident_id}/retry", headers=ADMIN, json={}), 409)
