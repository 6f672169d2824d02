"""Accountable sign-off: with `signoff: true` the responsible's result waits for the accountable role,
which approves it (the task completes with that result) or rejects it (back to the submitter)."""

from __future__ import annotations

import pytest

from itsmflow.engine.errors import Forbidden

from .packutil import H, complete, drive_to, ok, problem, task


def test_signoff_reject_then_approve(mini_client, mini_engine):
    iid = drive_to(mini_client, "test")
    test = task(mini_client, iid, "test")
    assert test["phase"] == "work" and test["candidateRoles"] == ["independent-tester"]
    ok(mini_client.post(f"/api/tasks/{test['id']}/claim", headers=H("tess")), 204)
    resp = ok(complete(mini_client, test["id"], "tess", {"outcome": "unsuccessful"}))
    assert resp["awaitingSignoff"] is True and resp["processInstance"]["state"] == "active"

    waiting = task(mini_client, iid, "test")
    assert waiting["id"] == test["id"]
    assert (waiting["phase"], waiting["candidateRoles"], waiting["assignee"], waiting["submittedBy"]) == (
        "signoff", ["change-manager"], None, "tess")
    for user, visible in [("mike", True), ("mona", True), ("tess", False), ("bob", False)]:
        inbox = ok(mini_client.get("/api/tasks", headers=H(user), params={"candidateUser": user}))
        assert (test["id"] in [t["id"] for t in inbox]) is visible, user
    # the form shows the submitted result to the accountable
    form = ok(mini_client.get(f"/api/tasks/{test['id']}/form", headers=H("mike")))
    assert form["data"] == {"outcome": "unsuccessful"}

    problem(complete(mini_client, test["id"], "mike", {"outcome": "successful"}), 409)  # use /signoff
    problem(mini_client.post(f"/api/tasks/{test['id']}/signoff", headers=H("tess"), json={"decision": "approved"}), 403)
    body = problem(mini_client.post(f"/api/tasks/{test['id']}/signoff", headers=H("mike"),
                                    json={"decision": "rejected"}), 422)
    assert body["errors"] == [{"path": "$.reason", "message": "is required when decision is rejected"}]
    problem(mini_client.post(f"/api/tasks/{test['id']}/signoff", headers=H("mike"), json={"decision": "maybe"}), 422)

    ok(mini_client.post(f"/api/tasks/{test['id']}/signoff", headers=H("mike"),
                        json={"decision": "rejected", "reason": "Attach the test evidence"}))
    back = task(mini_client, iid, "test")
    assert (back["phase"], back["candidateRoles"], back["assignee"]) == ("work", ["independent-tester"], "tess")
    notes = ok(mini_client.get("/api/notifications", headers=H("tess")))
    assert [n["type"] for n in notes] == ["signoff_rejected"] and "Attach the test evidence" in notes[0]["message"]
    problem(mini_client.post(f"/api/tasks/{test['id']}/signoff", headers=H("mike"), json={"decision": "approved"}), 409)

    ok(complete(mini_client, test["id"], "tess", {"outcome": "successful", "evidence": [{"name": "smoke", "passed": True}]}))
    done = ok(mini_client.post(f"/api/tasks/{test['id']}/signoff", headers=H("mona"), json={"decision": "approved"}))
    assert done["processInstance"]["state"] == "completed"
    assert done["processInstance"]["variables"]["outcome"] == "successful"

    events = ok(mini_client.get(f"/api/process-instances/{iid}/history", headers=H("root")))
    trail = [(e["type"], e["actor"]) for e in events if e["taskId"] == test["id"]]
    assert trail == [
        ("task_created", "bob"),  # created by the completion of "build"
        ("task_claimed", "tess"),
        ("task_submitted_for_signoff", "tess"),
        ("task_signoff_rejected", "mike"),
        ("task_submitted_for_signoff", "tess"),
        ("task_signed_off", "mona"),
        ("task_completed", "tess"),
    ]
    completed = [e for e in events if e["type"] == "task_completed" and e["taskId"] == test["id"]][0]
    assert completed["data"]["signedOffBy"] == "mona"
    closed = ok(mini_client.get(f"/api/tasks/{test['id']}", headers=H("root")))
    assert (closed["state"], closed["completedBy"]) == ("completed", "tess")


def test_the_submitter_may_not_sign_off_their_own_result(mini_client, mini_engine):
    """Four eyes, even when the submitter holds the accountable role."""
    from itsmflow.engine.identity import Principal

    iid = drive_to(mini_client, "test")
    test = task(mini_client, iid, "test")
    both = Principal("tim", frozenset({"independent-tester", "change-manager"}))
    mini_engine.tasks.complete(test["id"], both, {"outcome": "successful"})
    with pytest.raises(Forbidden, match="four-eyes"):
        mini_engine.tasks.signoff(test["id"], both, "approved")
