"""Fuzzing the HTTP API: no input may produce a 5xx.

1. schemathesis over every operation of ``/openapi.json`` (positive and negative examples), in
   process against the ASGI app, with an admin token and a seeded database;
2. hypothesis-driven bodies and query strings against *real* ids (a deployed process, an open
   task, a running instance), which random schema-based generation would never hit.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itsmflow.api.app import create_app
from itsmflow.engine.core import Engine
from itsmflow.settings import Settings

from .conftest import fixture_bytes

TEN = fixture_bytes("ten_steps.bpmn")
ADMIN = {"Authorization": "Bearer t-root"}
JSON_ADMIN = {**ADMIN, "Content-Type": "application/json"}


def as_user(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer t-{user}", "Content-Type": "application/json"}
# Deterministic and bounded by default; ITSMFLOW_FUZZ_EXAMPLES=500 runs a longer, randomised session.
_EXAMPLES = os.environ.get("ITSMFLOW_FUZZ_EXAMPLES")
FUZZ_SETTINGS = settings(max_examples=int(_EXAMPLES or 25), deadline=None, suppress_health_check=list(HealthCheck),
                         derandomize=not _EXAMPLES)


def _seeded_engine(settings_, directory) -> tuple[Engine, dict[str, str]]:
    engine = Engine(settings_, directory)
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    inst = engine.runtime.start("ten_steps", business_key="FUZZ-1", variables={"requester": "rita"})
    task = engine.tasks.query(process_instance_id=inst.id)[0][0]
    return engine, {"instance": inst.id, "task": task.id, "definition": inst.definition_id}


# The schema is loaded once at import time from an app whose engine is swapped in per test: routes
# read ``app.state.engine``, so the app itself needs no database to describe itself.
APP = create_app(SimpleNamespace(settings=Settings()))  # type: ignore[arg-type]
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture
def seeded_app(settings, directory):
    engine, ids = _seeded_engine(settings, directory)
    APP.state.engine = engine
    yield ids
    APP.state.engine = None
    engine.close()


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_operation_answers_5xx(case, seeded_app):
    # every built-in check (status codes, content types and bodies as documented) except the two that
    # judge semantics: a schema-valid upload can still be an invalid BPMN file (400), and unknown query
    # parameters are ignored rather than refused
    response = case.call_and_validate(headers=ADMIN, excluded_checks=[
        schemathesis.checks.positive_data_acceptance, schemathesis.checks.negative_data_rejection])
    assert response.status_code < 500, (case.method, case.formatted_path, case.query, case.body, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"][0].startswith("application/problem+json"), response.headers
        body = response.json()
        assert body["status"] == response.status_code and body["title"] and body["detail"]


# -- targeted fuzzing with real ids ---------------------------------------------------------------
@pytest.fixture
def seeded(settings, directory):
    engine, ids = _seeded_engine(settings, directory)
    with TestClient(create_app(engine), raise_server_exceptions=True) as client:
        yield client, ids
    engine.close()


json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
names = st.text(max_size=12) | st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
variables = st.dictionaries(names, json_values, max_size=5)
bodies = st.one_of(
    st.fixed_dictionaries({}, optional={"businessKey": st.text(max_size=300) | json_scalars,
                                        "variables": variables | json_values}),
    json_values,
)


def _check(resp) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert resp.headers["content-type"].startswith("application/problem+json")


@FUZZ_SETTINGS
@given(body=bodies)
def test_start_with_arbitrary_bodies(seeded, body):
    client, _ = seeded
    _check(client.post("/api/process-definitions/key/ten_steps/start", headers=JSON_ADMIN, content=json.dumps(body)))


@FUZZ_SETTINGS
@given(body=st.one_of(st.fixed_dictionaries({}, optional={"variables": variables | json_values}), json_values),
       user=st.sampled_from(["rita", "wes", "root", "mona"]))
def test_complete_with_arbitrary_bodies(seeded, body, user):
    client, ids = seeded
    resp = client.post(f"/api/tasks/{ids['task']}/complete", headers=as_user(user),
                       content=json.dumps(body))
    _check(resp)


@FUZZ_SETTINGS
@given(action=st.sampled_from(["claim", "unclaim", "delegate", "form", "get"]),
       user=st.sampled_from(["rita", "wes", "root", "mona"]),
       body=st.one_of(st.fixed_dictionaries({"userId": st.text(max_size=20) | json_scalars}), json_values))
def test_task_actions_in_any_order(seeded, action, user, body):
    client, ids = seeded
    headers = as_user(user)
    if action == "get":
        resp = client.get(f"/api/tasks/{ids['task']}", headers=headers)
    elif action == "form":
        resp = client.get(f"/api/tasks/{ids['task']}/form", headers=headers)
    else:
        resp = client.post(f"/api/tasks/{ids['task']}/{action}", headers=headers, content=json.dumps(body))
    _check(resp)


@FUZZ_SETTINGS
@given(action=st.sampled_from(["suspend", "activate", "terminate", "history", "get"]),
       reason=st.text(max_size=50) | json_scalars)
def test_instance_actions_in_any_order(seeded, action, reason):
    client, ids = seeded
    base = f"/api/process-instances/{ids['instance']}"
    if action in ("history", "get"):
        resp = client.get(base + ("/history" if action == "history" else ""), headers=ADMIN)
    else:
        resp = client.post(f"{base}/{action}", headers=JSON_ADMIN, content=json.dumps({"reason": reason}))
    _check(resp)


query_values = st.text(max_size=30) | st.integers().map(str) | st.sampled_from(["", "open", "active", "0", "-1"])


@FUZZ_SETTINGS
@given(path=st.sampled_from(["/api/tasks", "/api/process-instances", "/api/process-definitions", "/api/incidents"]),
       params=st.dictionaries(st.sampled_from(["assignee", "candidateUser", "candidateRole", "businessKey",
                                               "definitionKey", "taskDefinitionKey", "processInstanceId",
                                               "state", "page", "size", "key", "latestVersion"]),
                              query_values, max_size=5))
def test_queries_with_arbitrary_parameters(seeded, path, params):
    client, _ = seeded
    _check(client.get(path, headers=ADMIN, params=params))
