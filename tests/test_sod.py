"""Segregation of duties: rules declared by the pack, enforced on claim, delegation, completion and
sign-off with a 403 that names the rule."""

from __future__ import annotations

from .packutil import H, complete, drive_to, ok, problem, task


def test_initiator_holding_change_authority_cannot_approve_own_change(mini_client):
    # carl holds change-initiator *and* change-authority; he raises the change
    iid = drive_to(mini_client, "authorise", initiator="carl")
    authorise = task(mini_client, iid, "authorise")
    # it is in his inbox (his roles qualify), but the rule forbids him to act on it
    inbox = ok(mini_client.get("/api/tasks", headers=H("carl"), params={"candidateUser": "carl"}))
    assert authorise["id"] in [t["id"] for t in inbox]
    for resp in (mini_client.post(f"/api/tasks/{authorise['id']}/claim", headers=H("carl")),
                 complete(mini_client, authorise["id"], "carl", {"decision": "approved"})):
        body = problem(resp, 403)
        assert "initiator-cannot-authorise" in body["detail"]
        assert "may not authorise it" in body["detail"]  # the rule's description
    # nothing changed: still open, unassigned
    assert task(mini_client, iid, "authorise")["assignee"] is None
    # a second authority can
    ok(mini_client.post(f"/api/tasks/{authorise['id']}/claim", headers=H("alma")), 204)
    ok(complete(mini_client, authorise["id"], "alma", {"decision": "approved"}))
    assert task(mini_client, iid, "build")


def test_the_same_user_may_authorise_changes_raised_by_others(mini_client):
    iid = drive_to(mini_client, "authorise", initiator="ivan")
    ok(complete(mini_client, task(mini_client, iid, "authorise")["id"], "carl", {"decision": "approved"}))


def test_builder_may_not_be_the_independent_tester(mini_client):
    iid = drive_to(mini_client, "test", builder="bob")  # bob holds change-builder and independent-tester
    test = task(mini_client, iid, "test")
    body = problem(mini_client.post(f"/api/tasks/{test['id']}/claim", headers=H("bob")), 403)
    assert "builder-not-tester" in body["detail"] and "did task 'build'" in body["detail"]
    problem(complete(mini_client, test["id"], "bob", {"outcome": "successful"}), 403)
    # delegating the test to the builder is refused too
    ok(mini_client.post(f"/api/tasks/{test['id']}/claim", headers=H("tess")), 204)
    body = problem(mini_client.post(f"/api/tasks/{test['id']}/delegate", headers=H("tess"), json={"userId": "bob"}), 403)
    assert "builder-not-tester" in body["detail"]
    resp = ok(complete(mini_client, test["id"], "tess", {"outcome": "successful"}))
    assert resp["awaitingSignoff"] is True


def test_a_user_who_did_not_build_may_test(mini_client, mini_engine):
    """bob may test a change someone else built (the rule is per instance)."""
    from itsmflow.engine.identity import Principal

    iid = drive_to(mini_client, "build")
    build = task(mini_client, iid, "build")
    # bob is the only builder of the example organisation: another builder, through the engine API
    mini_engine.tasks.complete(build["id"], Principal("bea", frozenset({"change-builder"})), {"buildNotes": "x"})
    test = task(mini_client, iid, "test")
    ok(mini_client.post(f"/api/tasks/{test['id']}/claim", headers=H("bob")), 204)
