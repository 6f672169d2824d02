"""Consulted roles: a required consultation blocks completion until every consulted role has recorded an
opinion; an advisory one does not."""

from __future__ import annotations

from .packutil import H, complete, consult, drive_to, ok, problem, start, task


def test_required_consultation_blocks_completion_until_the_opinion_exists(mini_client, mini_engine):
    iid = start(mini_client)["id"]
    classify = task(mini_client, iid, "classify")
    history_before = ok(mini_client.get(f"/api/process-instances/{iid}/history", headers=H("root")))
    body = problem(complete(mini_client, classify["id"], "mike", {"category": "standard"}), 409)
    assert body["detail"].startswith("consultation pending: configuration-manager")
    # refused before anything changed
    assert ok(mini_client.get(f"/api/process-instances/{iid}/history", headers=H("root"))) == history_before
    assert task(mini_client, iid, "classify")["state"] == "open"

    # only holders of a consulted role may give an opinion
    assert "configuration-manager" in problem(consult(mini_client, classify["id"], "mike"), 403)["detail"]
    problem(consult(mini_client, classify["id"], "cora", role="service-owner"), 403)
    problem(mini_client.post(f"/api/tasks/{classify['id']}/consultations", headers=H("cora"), json={}), 422)
    recorded = ok(consult(mini_client, classify["id"], "cora", "Touches the CMDB: update the CI record"), 201)
    assert [(c["role"], c["userId"]) for c in recorded] == [("configuration-manager", "cora")]
    listed = ok(mini_client.get(f"/api/tasks/{classify['id']}/consultations", headers=H("mike")))
    assert [c["opinion"] for c in listed] == ["Touches the CMDB: update the CI record"]
    events = ok(mini_client.get(f"/api/process-instances/{iid}/history", headers=H("root")))
    consulted = [e for e in events if e["type"] == "consultation_recorded"]
    assert consulted[0]["actor"] == "cora" and consulted[0]["data"]["roles"] == ["configuration-manager"]

    ok(complete(mini_client, classify["id"], "mike", {"category": "standard"}))
    assert task(mini_client, iid, "authorise")
    # a closed task takes no more opinions
    problem(consult(mini_client, classify["id"], "cora"), 409)


def test_advisory_consultation_does_not_block(mini_client):
    iid = drive_to(mini_client, "test")
    test = task(mini_client, iid, "test")
    resp = ok(complete(mini_client, test["id"], "tess", {"outcome": "successful"}))  # no opinion yet: fine
    assert resp["awaitingSignoff"]
    # the service owner may still record one (advisory)
    ok(consult(mini_client, test["id"], "sven", "Tell the users about the new version"), 201)


def test_tasks_without_consulted_roles_take_no_opinions(mini_client):
    iid = drive_to(mini_client, "authorise")
    problem(consult(mini_client, task(mini_client, iid, "authorise")["id"], "cora"), 409)
    problem(mini_client.get("/api/tasks/nope/consultations", headers=H("cora")), 404)
