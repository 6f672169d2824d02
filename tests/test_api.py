"""The HTTP API end to end (TestClient over create_app): the ten-step process driven by several users,
plus every error path of the contract (401, 403, 404, 409, 422, 400) as application/problem+json."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from itsmflow.api.app import create_app
from itsmflow.engine.core import Engine
from itsmflow.engine.history import GENESIS

from .conftest import fixture_bytes

TEN = fixture_bytes("ten_steps.bpmn")
PROBLEM = "application/problem+json"


def H(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer t-{user}"}


ADMIN = H("root")


@pytest.fixture
def engine(settings, directory):
    eng = Engine(settings, directory)
    yield eng
    eng.close()


@pytest.fixture
def client(engine):
    with TestClient(create_app(engine)) as c:
        yield c


def problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    body = resp.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def deploy(client, files=(("ten_steps.bpmn", TEN),), user="root", name="ten"):
    return client.post("/api/deployments", headers=H(user), data={"name": name},
                       files=[("files", (fname, data, "application/xml")) for fname, data in files])


@pytest.fixture
def deployed(client):
    assert deploy(client).status_code == 201
    return client


def start(client, user="rita", **body):
    return client.post("/api/process-definitions/key/ten_steps/start", headers=H(user), json=body)


def open_tasks(client, instance_id, **params):
    resp = client.get("/api/tasks", headers=ADMIN, params={"processInstanceId": instance_id, **params})
    assert resp.status_code == 200, resp.text
    return resp.json()


def task_by_key(client, instance_id, key):
    return next(t for t in open_tasks(client, instance_id) if t["taskDefinitionKey"] == key)


def complete(client, task_id, user, variables=None):
    return client.post(f"/api/tasks/{task_id}/complete", headers=H(user), json={"variables": variables or {}})


# -- auth, health, openapi ------------------------------------------------------------------------
def test_health_openapi_and_docs_need_no_token(client, engine):
    resp = client.get("/api/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "db": engine.db_kind}
    assert resp.json()["db"] in ("sqlite", "postgresql")
    spec = client.get("/openapi.json").json()
    assert "/api/tasks/{task_id}/complete" in spec["paths"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    err = spec["paths"]["/api/tasks/{task_id}/claim"]["post"]["responses"]["409"]
    assert list(err["content"]) == [PROBLEM]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dTpw"},
                                     {"Authorization": "Bearer "}])
def test_unauthenticated_is_401_problem(client, headers):
    for method, path in [("get", "/api/me"), ("get", "/api/tasks"), ("get", "/api/process-instances"),
                         ("post", "/api/process-definitions/key/ten_steps/start"), ("get", "/api/incidents")]:
        body = problem(getattr(client, method)(path, headers=headers), 401)
        assert body["instance"] == path
    resp = client.get("/api/me", headers=headers)
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_me(client):
    resp = client.get("/api/me", headers=H("mona"))
    assert resp.status_code == 200
    assert resp.json() == {"userId": "mona", "name": "Mona Manager", "roles": ["manager"]}


def test_request_id_is_honoured_or_generated(client):
    assert client.get("/api/health", headers={"X-Request-Id": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/api/health", headers={"X-Request-Id": "bad id\twith spaces"}).headers["x-request-id"]
    assert generated and generated != "bad id\twith spaces"
    assert client.get("/api/nope").headers["x-request-id"]


# -- deployments and definitions ------------------------------------------------------------------
def test_deploy_versions_and_definition_reads(client):
    first = deploy(client)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["name"] == "ten" and body["id"]
    [d] = body["definitions"]
    assert (d["key"], d["version"], d["name"]) == ("ten_steps", 1, "Ten step request")

    again = deploy(client, name="again")
    assert again.status_code == 200
    assert again.json()["definitions"] == body["definitions"]

    problem(deploy(client, user="mona"), 403)
    changed = TEN.replace(b'name="Review"', b'name="Review outcome"')
    v2 = deploy(client, files=[("ten_steps.bpmn", changed)])
    assert v2.status_code == 201 and v2.json()["definitions"][0]["version"] == 2

    xml = client.get(f"/api/process-definitions/{d['id']}/xml", headers=H("rita"))
    assert xml.status_code == 200
    assert xml.headers["content-type"] == "application/xml"
    assert xml.content == TEN
    assert client.get(f"/api/process-definitions/{v2.json()['definitions'][0]['id']}/xml",
                      headers=H("rita")).content == changed

    latest = client.get("/api/process-definitions/key/ten_steps", headers=H("rita")).json()
    assert latest["version"] == 2 and latest["resource"] == "ten_steps.bpmn"
    assert client.get(f"/api/process-definitions/{d['id']}", headers=H("rita")).json()["version"] == 1
    all_defs = client.get("/api/process-definitions", headers=H("rita"))
    assert [x["version"] for x in all_defs.json()] == [1, 2] and all_defs.headers["x-total-count"] == "2"
    latest_only = client.get("/api/process-definitions", headers=H("rita"),
                             params={"key": "ten_steps", "latestVersion": "true"}).json()
    assert [x["version"] for x in latest_only] == [2]
    assert client.get("/api/process-definitions", headers=H("rita"), params={"key": "nope"}).json() == []

    form = client.get("/api/process-definitions/key/ten_steps/form", headers=H("rita"))
    assert form.status_code == 200 and form.json() == {"schema": {"type": "object", "properties": {}}}

    problem(client.get("/api/process-definitions/key/nope", headers=H("rita")), 404)
    problem(client.get("/api/process-definitions/key/nope/form", headers=H("rita")), 404)
    problem(client.get("/api/process-definitions/nope:1:x/xml", headers=H("rita")), 404)
    problem(client.get("/api/process-definitions/nope:1:x", headers=H("rita")), 404)


def test_invalid_deployments_are_400_with_located_errors(client):
    body = problem(deploy(client, files=[("broken.bpmn", b"<bpmn:definitions xmlns:bpmn='x'>\n  <oops>\n")]), 400)
    assert body["errors"], body
    err = body["errors"][0]
    assert set(err) == {"file", "line", "column", "message"}
    assert err["file"] == "broken.bpmn" and isinstance(err["line"], int) and err["message"]
    # no file part at all, and a file without a name
    problem(client.post("/api/deployments", headers=ADMIN, data={"name": "x"}), 422)
    nameless = client.post("/api/deployments", headers=ADMIN, files=[("files", ("", TEN, "application/xml"))])
    assert nameless.status_code in (400, 422)
    problem(nameless, nameless.status_code)
    # nothing was deployed
    assert client.get("/api/process-definitions", headers=ADMIN).json() == []


# -- the whole process ----------------------------------------------------------------------------
def test_ten_steps_driven_over_http_by_several_users(deployed):
    client = deployed
    resp = start(client, businessKey="REQ-1", variables={"requester": "rita"})
    assert resp.status_code == 201, resp.text
    inst = resp.json()
    assert inst["state"] == "active" and inst["businessKey"] == "REQ-1" and inst["version"] == 1
    assert [a["activityId"] for a in inst["activeActivities"]] == ["record"]
    assert inst["variables"] == {"requester": "rita"} and inst["incidents"] == []
    iid = inst["id"]

    problem(start(client, businessKey="REQ-1"), 409)
    problem(client.post("/api/process-definitions/key/nope/start", headers=H("rita"), json={}), 404)

    # rita's inbox has the record task; wes's has nothing
    inbox = client.get("/api/tasks", headers=H("rita"), params={"candidateUser": "rita"}).json()
    assert [t["taskDefinitionKey"] for t in inbox] == ["record"]
    record = inbox[0]
    assert record["candidateRoles"] == ["requester"] and record["businessKey"] == "REQ-1"
    assert record["lane"] == "requester" and record["assignee"] is None and record["definitionKey"] == "ten_steps"
    for field in ("id", "name", "processInstanceId", "createdAt", "due", "formKey"):
        assert field in record
    assert client.get("/api/tasks", headers=H("wes"), params={"candidateUser": "wes"}).json() == []

    # wrong role: 403 on claim and complete
    problem(client.post(f"/api/tasks/{record['id']}/claim", headers=H("wes")), 403)
    problem(complete(client, record["id"], "wes", {"amount": 1}), 403)

    form = client.get(f"/api/tasks/{record['id']}/form", headers=H("rita")).json()
    assert form["schema"] == {"type": "object", "properties": {}} and form["data"]["requester"] == "rita"

    done = complete(client, record["id"], "rita", {"amount": 5000})
    assert done.status_code == 200, done.text
    result = done.json()
    assert result["processInstance"]["variables"]["priority"] == "high"
    assert result["nextTasks"] == []  # rita may not approve
    problem(complete(client, record["id"], "rita", {"amount": 1}), 409)  # no longer open

    # approval: claim race between two managers
    approve = task_by_key(client, iid, "approve")
    assert client.post(f"/api/tasks/{approve['id']}/claim", headers=H("mona")).status_code == 204
    assert client.get(f"/api/tasks/{approve['id']}", headers=H("max")).json()["assignee"] == "mona"
    problem(client.post(f"/api/tasks/{approve['id']}/claim", headers=H("max")), 409)
    problem(complete(client, approve["id"], "max", {"decision": "approved"}), 409)
    assert client.get("/api/tasks", headers=H("max"), params={"candidateUser": "max"}).json() == []
    assert client.get("/api/tasks", headers=H("max"), params={"assignee": "mona"}).json()[0]["id"] == approve["id"]
    # delegate to max; mona stays the owner
    problem(client.post(f"/api/tasks/{approve['id']}/delegate", headers=H("mona"), json={"userId": "nobody"}), 404)
    assert client.post(f"/api/tasks/{approve['id']}/delegate", headers=H("mona"),
                       json={"userId": "max"}).status_code == 204
    t = client.get(f"/api/tasks/{approve['id']}", headers=H("max")).json()
    assert (t["assignee"], t["owner"]) == ("max", "mona")
    r = complete(client, approve["id"], "max", {"decision": "approved"})
    assert r.status_code == 200 and r.json()["nextTasks"] == []

    prep_a, prep_b = task_by_key(client, iid, "prepare_a"), task_by_key(client, iid, "prepare_b")
    r = complete(client, prep_a["id"], "wes", {"part_a": "ready"})
    assert [t["taskDefinitionKey"] for t in r.json()["nextTasks"]] == ["prepare_b"]
    assert complete(client, prep_b["id"], "wanda", {"part_b": "ready"}).status_code == 200
    implement = task_by_key(client, iid, "implement")
    r = complete(client, implement["id"], "wes", {"outcome": "unsuccessful"})
    assert [t["taskDefinitionKey"] for t in r.json()["nextTasks"]] == ["back_out"]
    assert complete(client, task_by_key(client, iid, "back_out")["id"], "wanda").status_code == 200
    review = task_by_key(client, iid, "review")
    final = complete(client, review["id"], "mona", {"reviewOutcome": "closed"}).json()
    assert final["processInstance"]["state"] == "completed" and final["nextTasks"] == []
    assert final["processInstance"]["activeActivities"] == []

    done_tasks = client.get("/api/tasks", headers=ADMIN, params={"processInstanceId": iid, "state": "completed"})
    assert done_tasks.headers["x-total-count"] == "7"
    assert {t["completedBy"] for t in done_tasks.json()} == {"rita", "max", "wes", "wanda", "mona"}
    assert client.get(f"/api/process-instances/{iid}", headers=H("rita")).json()["state"] == "completed"
    # the business key is free again
    assert start(client, businessKey="REQ-1").status_code == 201

    history = client.get(f"/api/process-instances/{iid}/history", headers=H("rita"))
    assert history.status_code == 200
    events = history.json()
    assert events[0]["type"] == "process_started" and events[-1]["type"] == "process_completed"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["prevHash"] == GENESIS
    for prev, ev in zip(events, events[1:]):
        assert ev["prevHash"] == prev["hash"] and len(ev["hash"]) == 64
    for ev in events:
        assert set(ev) >= {"seq", "at", "actor", "type", "activityId", "taskId", "data", "hash", "prevHash"}
    approval = next(e for e in events if e["type"] == "task_completed" and e["activityId"] == "approve")
    assert approval["actor"] == "max" and approval["data"]["owner"] == "mona"


def test_concurrent_claims_exactly_one_wins(deployed):
    client = deployed
    iid = start(client).json()["id"]
    record = task_by_key(client, iid, "record")
    complete(client, record["id"], "rita", {"amount": 5000})
    approve = task_by_key(client, iid, "approve")
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def claim(user):
        barrier.wait()
        statuses.append(client.post(f"/api/tasks/{approve['id']}/claim", headers=H(user)).status_code)

    threads = [threading.Thread(target=claim, args=(u,)) for u in ("mona", "max")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [204, 409]


def test_unclaim_rules(deployed):
    client = deployed
    iid = start(client).json()["id"]
    record = task_by_key(client, iid, "record")
    problem(client.post(f"/api/tasks/{record['id']}/unclaim", headers=H("rita")), 409)  # not assigned
    assert client.post(f"/api/tasks/{record['id']}/claim", headers=H("rita")).status_code == 204
    assert client.post(f"/api/tasks/{record['id']}/claim", headers=H("rita")).status_code == 204  # idempotent
    problem(client.post(f"/api/tasks/{record['id']}/unclaim", headers=H("wes")), 403)
    assert client.post(f"/api/tasks/{record['id']}/unclaim", headers=H("rita")).status_code == 204
    assert client.get(f"/api/tasks/{record['id']}", headers=H("rita")).json()["assignee"] is None


# -- admin operations -----------------------------------------------------------------------------
def test_suspend_activate_terminate(deployed):
    client = deployed
    iid = start(client, businessKey="BK-1").json()["id"]
    record = task_by_key(client, iid, "record")
    for op in ("suspend", "activate"):
        problem(client.post(f"/api/process-instances/{iid}/{op}", headers=H("rita")), 403)
    problem(client.post(f"/api/process-instances/{iid}/terminate", headers=H("rita"), json={"reason": "x"}), 403)

    assert client.post(f"/api/process-instances/{iid}/suspend", headers=ADMIN).status_code == 204
    assert client.get(f"/api/process-instances/{iid}", headers=ADMIN).json()["state"] == "suspended"
    problem(client.post(f"/api/process-instances/{iid}/suspend", headers=ADMIN), 409)
    problem(complete(client, record["id"], "rita", {"amount": 1}), 409)
    problem(client.post(f"/api/tasks/{record['id']}/claim", headers=H("rita")), 409)
    listed = client.get("/api/process-instances", headers=ADMIN, params={"state": "suspended"})
    assert [i["id"] for i in listed.json()] == [iid]

    assert client.post(f"/api/process-instances/{iid}/activate", headers=ADMIN).status_code == 204
    problem(client.post(f"/api/process-instances/{iid}/activate", headers=ADMIN), 409)
    assert complete(client, record["id"], "rita", {"amount": 1}).status_code == 200

    problem(client.post(f"/api/process-instances/{iid}/terminate", headers=ADMIN, json={}), 422)
    problem(client.post(f"/api/process-instances/{iid}/terminate", headers=ADMIN, json={"reason": "  "}), 400)
    assert client.post(f"/api/process-instances/{iid}/terminate", headers=ADMIN,
                       json={"reason": "raised in error"}).status_code == 204
    view = client.get(f"/api/process-instances/{iid}", headers=ADMIN).json()
    assert (view["state"], view["endReason"]) == ("terminated", "raised in error")
    problem(client.post(f"/api/process-instances/{iid}/terminate", headers=ADMIN, json={"reason": "again"}), 409)
    assert open_tasks(client, iid) == []
    assert len(open_tasks(client, iid, state="cancelled")) == 2


# -- queries, pagination, 404s, 422s --------------------------------------------------------------
def test_pagination_and_filters(deployed):
    client = deployed
    ids = [start(client, businessKey=f"B-{i}").json()["id"] for i in range(5)]
    page1 = client.get("/api/process-instances", headers=ADMIN, params={"size": 2})
    assert page1.headers["x-total-count"] == "5" and len(page1.json()) == 2
    page3 = client.get("/api/process-instances", headers=ADMIN, params={"size": 2, "page": 3})
    assert len(page3.json()) == 1 and page3.headers["x-total-count"] == "5"
    beyond = client.get("/api/process-instances", headers=ADMIN, params={"size": 2, "page": 4})
    assert beyond.json() == [] and beyond.headers["x-total-count"] == "5"
    seen = [i["id"] for p in (1, 2, 3) for i in
            client.get("/api/process-instances", headers=ADMIN, params={"size": 2, "page": p}).json()]
    assert sorted(seen) == sorted(ids)
    assert client.get("/api/process-instances", headers=ADMIN,
                      params={"businessKey": "B-3"}).json()[0]["id"] == ids[3]
    assert client.get("/api/process-instances", headers=ADMIN,
                      params={"definitionKey": "ten_steps", "state": "active"}).headers["x-total-count"] == "5"
    assert client.get("/api/process-instances", headers=ADMIN, params={"state": "completed"}).json() == []

    tasks = client.get("/api/tasks", headers=H("rita"), params={"candidateUser": "rita", "size": 2, "page": 2})
    assert tasks.headers["x-total-count"] == "5" and len(tasks.json()) == 2
    for params, expected in [({"candidateRole": "requester"}, 5), ({"candidateRole": "manager"}, 0),
                             ({"businessKey": "B-1"}, 1), ({"definitionKey": "ten_steps"}, 5),
                             ({"taskDefinitionKey": "record"}, 5), ({"taskDefinitionKey": "approve"}, 0),
                             ({"processInstanceId": ids[0]}, 1), ({"assignee": "rita"}, 0),
                             ({"state": "completed"}, 0)]:
        resp = client.get("/api/tasks", headers=H("rita"), params=params)
        assert resp.status_code == 200 and resp.headers["x-total-count"] == str(expected), params


@pytest.mark.parametrize("path, params", [
    ("/api/process-instances", {"size": 0}),
    ("/api/process-instances", {"size": 501}),
    ("/api/process-instances", {"page": 0}),
    ("/api/process-instances", {"page": "abc"}),
    ("/api/process-instances", {"state": "bogus"}),
    ("/api/tasks", {"state": "bogus"}),
    ("/api/tasks", {"size": -1}),
    ("/api/tasks", {"size": "1e3"}),
    ("/api/tasks", {"businessKey": "a\x00b"}),
    ("/api/process-definitions", {"latestVersion": "maybe"}),
])
def test_bad_query_parameters_are_422(client, path, params):
    body = problem(client.get(path, headers=ADMIN, params=params), 422)
    assert body["errors"] and all(set(e) == {"path", "message"} for e in body["errors"])
    assert body["errors"][0]["path"].startswith("query.")


def test_unknown_ids_are_404(deployed):
    client = deployed
    for method, path in [
        ("get", "/api/process-instances/nope"), ("get", "/api/process-instances/nope/history"),
        ("post", "/api/process-instances/nope/suspend"), ("post", "/api/process-instances/nope/activate"),
        ("get", "/api/tasks/nope"), ("get", "/api/tasks/nope/form"), ("post", "/api/tasks/nope/claim"),
        ("post", "/api/tasks/nope/unclaim"),
    ]:
        problem(getattr(client, method)(path, headers=ADMIN), 404)
    problem(client.post("/api/process-instances/nope/terminate", headers=ADMIN, json={"reason": "x"}), 404)
    problem(client.post("/api/tasks/nope/delegate", headers=ADMIN, json={"userId": "max"}), 404)
    problem(client.post("/api/tasks/nope/complete", headers=ADMIN, json={}), 404)
    problem(client.get("/api/no-such-route", headers=ADMIN), 404)
    problem(client.get("/nothing-here"), 404)
    problem(client.delete("/api/tasks", headers=ADMIN), 405)


def test_bad_bodies(deployed):
    client = deployed
    url = "/api/process-definitions/key/ten_steps/start"
    malformed = client.post(url, headers={**H("rita"), "Content-Type": "application/json"}, content=b'{"variables": ')
    problem(malformed, 400)
    body = problem(client.post(url, headers=H("rita"), json=["not", "an", "object"]), 422)
    assert body["errors"][0]["path"].startswith("body")
    problem(client.post(url, headers=H("rita"), json={"variables": [1, 2]}), 422)
    problem(client.post(url, headers=H("rita"), json={"unexpected": 1}), 422)
    problem(client.post(url, headers=H("rita"), json={"businessKey": ""}), 422)
    problem(client.post(url, headers=H("rita"), json={"businessKey": "x" * 256}), 422)
    # engine-side variable checks: 422 with errors naming the path
    body = problem(client.post(url, headers=H("rita"), json={"variables": {"_private": 1}}), 422)
    assert body["errors"][0]["path"].startswith("$")
    assert client.get("/api/process-instances", headers=ADMIN).json() == []

    iid = start(client).json()["id"]
    record = task_by_key(client, iid, "record")
    problem(client.post(f"/api/tasks/{record['id']}/complete", headers=H("rita"), json={"variables": "x"}), 422)
    body = problem(complete(client, record["id"], "rita", {"not an identifier": 1}), 422)
    assert body["errors"]
    problem(client.post(f"/api/tasks/{record['id']}/delegate", headers=H("rita"), json={}), 422)
    assert client.get(f"/api/tasks/{record['id']}", headers=H("rita")).json()["state"] == "open"
    # empty bodies are fine where everything is optional
    assert client.post(url, headers=H("rita")).status_code == 201
    assert client.post(f"/api/tasks/{record['id']}/complete", headers=H("rita")).status_code == 200


def test_incidents(settings, directory):
    # no automatic retries: a failing step becomes an incident at once
    engine = Engine(settings.model_copy(update={"default_retries": 0}), directory)
    try:
        with TestClient(create_app(engine)) as client:
            assert deploy(client).status_code == 201
            iid = start(client).json()["id"]
            other = start(client).json()["id"]
            record = task_by_key(client, iid, "record")
            r = complete(client, record["id"], "rita", {"amount_typo": 5})  # the script needs 'amount'
            assert r.status_code == 200
            [incident] = r.json()["processInstance"]["incidents"]
            assert incident["activityId"] == "score" and "amount" in incident["message"]
            listed = client.get("/api/incidents", headers=H("rita"))
            assert listed.status_code == 200 and listed.headers["x-total-count"] == "1"
            assert [i["id"] for i in listed.json()] == [incident["id"]]
            item = listed.json()[0]
            assert set(item) >= {"id", "processInstanceId", "activityId", "message", "createdAt"}
            assert item["processInstanceId"] == iid
            assert client.get("/api/incidents", headers=H("rita"), params={"processInstanceId": other}).json() == []
            assert client.get(f"/api/process-instances/{iid}", headers=H("rita")).json()["state"] == "active"
    finally:
        engine.close()
