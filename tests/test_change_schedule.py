"""The schedule of changes (issue 6): ``GET /api/schedule/changes`` and the clash check of ``change_normal``.

``change_normal`` declares the schedule in its BPMN (process extension properties ``itsmflow.schedule*``): a
running change is on the schedule while ``scheduleState`` is set — ``approved`` once authorised, ``scheduled``
once its window passed the freeze-window and clash check, ``implemented``/``backed-out`` after deployment until
the review closes it. The check sends a
change back to scheduling when its window overlaps a freeze window or a change already *scheduled* on one of the
same services. Driven over HTTP with the app ``itsmflow serve`` runs (fixture ``iso`` of test_pack_change).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.test_pack_change import (  # noqa: F401 - iso is a fixture
    BUILT, H, IMPLEMENTERS, MANAGERS, MINOR, PASSED, RFC, WINDOW, assert_closed, completions, iso, ok,
    problem, raise_and_assess,
)

MARCH = {"from": "2030-03-01T00:00:00Z", "to": "2030-04-01T00:00:00Z"}
LATER = {"plannedStart": "2030-03-10T20:00:00Z", "plannedEnd": "2030-03-10T22:00:00Z"}


def freezes_in(api, start: str, end: str) -> list[str]:
    """Reasons of the organisation's freeze windows (policy freeze_windows, tailored) overlapping [start, end)."""
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    return [w["reason"] for w in api.policy("freeze_windows")["windows"]
            if at(w["start"]) < at(end) and at(start) < at(w["end"])]


def schedule(api, **params) -> dict:
    return ok(api.c.get("/api/schedule/changes", headers=H("frank"), params=params))


def approved_minor_change(api, initiator: str, business_key: str, rfc: dict | None = None) -> str:
    iid = raise_and_assess(api, initiator, MINOR, business_key, {**(rfc or RFC), "estimatedCost": 300})
    api.step(iid, "authorise_manager", "bob", {"decision": "approved"}, inbox=MANAGERS)
    return iid


def test_schedule_lists_approved_and_scheduled_changes_and_a_clash_sends_a_change_back(iso):
    api = iso
    first = approved_minor_change(api, "sam", "RFC-500")
    # authorised: on the schedule as approved, with its requested window not yet planned
    assert schedule(api, **MARCH)["changes"] == []  # no planned window yet
    api.step(first, "schedule", "bob", WINDOW, inbox=MANAGERS)
    view = schedule(api, **MARCH)
    assert view["name"] == "changes"
    assert [w["reason"] for w in view["freezeWindows"]] == freezes_in(api, MARCH["from"], MARCH["to"])
    [entry] = view["changes"]
    assert entry == {
        "processInstanceId": first, "businessKey": "RFC-500", "definitionKey": "change_normal",
        "plannedStart": "2030-03-09T20:00:00.000000+00:00", "plannedEnd": "2030-03-09T23:00:00.000000+00:00",
        "state": "scheduled", "summary": RFC["summary"], "scope": ["mail"], "instanceState": "active",
    }
    # outside the range: not listed (windows are half-open: a range starting at the end does not overlap)
    assert schedule(api, **{"from": "2030-03-09T23:00:00Z", "to": "2030-03-10T00:00:00Z"})["changes"] == []

    # a second change on the same service in an overlapping window clashes: back to scheduling with the reason
    second = approved_minor_change(api, "judy", "RFC-501")
    api.step(second, "schedule", "bob", {"plannedStart": "2030-03-09T22:00:00Z",
                                          "plannedEnd": "2030-03-10T01:00:00Z"}, inbox=MANAGERS)
    variables = api.instance(second)["variables"]
    assert "RFC-500" in variables["schedule_clash"] and "mail" in variables["schedule_clash"]
    assert api.open_keys(second) == ["schedule"]
    states = {e["businessKey"]: e["state"] for e in schedule(api, **MARCH)["changes"]}
    assert states == {"RFC-500": "scheduled", "RFC-501": "approved"}  # authorised, window not accepted
    form = api.form(api.task(second, "schedule")["id"], "bob")
    assert "RFC-500" in form["data"]["schedule_clash"]

    # a change on another service may share the window
    other = approved_minor_change(api, "alice", "RFC-502", {**RFC, "affectedServices": ["web shop"],
                                                             "summary": "Renew the web shop certificate"})
    api.step(other, "schedule", "bob", WINDOW, inbox=MANAGERS)
    assert api.open_keys(other) == ["build"]

    # re-planned after the first change: scheduled
    api.step(second, "schedule", "bob", LATER, inbox=MANAGERS)
    assert api.instance(second)["variables"]["schedule_clash"] is None
    listed = schedule(api, **MARCH)["changes"]
    assert [(e["businessKey"], e["state"]) for e in listed] == [
        ("RFC-500", "scheduled"), ("RFC-502", "scheduled"), ("RFC-501", "scheduled")]  # by planned start
    assert listed[1]["summary"] == "Renew the web shop certificate" and listed[1]["scope"] == ["web shop"]

    # the first change is implemented (listed as such until its review), then closed: off the schedule
    api.step(first, "build", "heidi", BUILT, inbox={"frank", "heidi"})
    api.step(first, "test", "quentin", PASSED, inbox={"grace", "quentin"})
    api.step(first, "confirm_window", "ivan", {"windowDecision": "proceed"}, inbox=IMPLEMENTERS)
    api.step(first, "deploy", "ivan", {"outcome": "successful", "implementationNotes": "Done."}, inbox=IMPLEMENTERS)
    assert [e["state"] for e in schedule(api, **MARCH)["changes"] if e["businessKey"] == "RFC-500"] == ["implemented"]
    api.step(first, "verify_close", "bob", {"reviewOutcome": "objectives_met", "lessonsLearned": "none",
                                            "ciLinksVerified": True, "documentationComplete": True}, inbox=MANAGERS)
    assert_closed(api, first)
    assert [e["businessKey"] for e in schedule(api, **MARCH)["changes"]] == ["RFC-502", "RFC-501"]

    # the audit trail shows both checks of the second change
    checks = [e for e in api.history(second) if e["type"] == "activity_completed" and e["activityId"] == "check_freeze"]
    assert len(checks) == 2 and "RFC-500" in checks[0]["data"]["changes"]["schedule_clash"]["new"]
    assert [e["actor"] for e in completions(api.history(second), "schedule")] == ["bob", "bob"]


def test_schedule_shows_the_freeze_windows_of_the_policy(iso):
    api = iso
    # the organisation's windows (the pack's defaults, or its tailoring's): the last one, seen through a range
    # that starts a day before it
    last = api.policy("freeze_windows")["windows"][-1]
    first_day = datetime.fromisoformat(last["start"].replace("Z", "+00:00"))
    range_from = (first_day - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    range_to = (first_day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    view = schedule(api, **{"from": range_from, "to": range_to})
    assert view["changes"] == []
    assert [w["reason"] for w in view["freezeWindows"]] == freezes_in(api, range_from, range_to)
    freeze = view["freezeWindows"][-1]
    assert freeze["reason"] == last["reason"]
    start = datetime.fromisoformat(freeze["start"])
    assert start == first_day and start.tzinfo == timezone.utc
    # a date without a time is midnight UTC; "to" defaults to 90 days after "from"
    assert ok(api.c.get("/api/schedule/changes", headers=H("bob"), params={"from": "2026-11-01"}))["to"] == \
        "2027-01-30T00:00:00+00:00"


def test_schedule_refuses_a_bad_range_and_unknown_schedules(iso):
    api = iso
    for params, path in (({"from": "yesterday", "to": "2030-01-01"}, "from"),
                         ({"from": "2030-01-01", "to": "soon"}, "to"),
                         ({"from": "2030-02-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}, "to"),
                         ({"from": "2030-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}, "to")):
        body = problem(api.c.get("/api/schedule/changes", headers=H("bob"), params=params), 422)
        assert [e["path"] for e in body["errors"]] == [path], body
    # dates at the edge of the calendar are answered, never a 500
    assert ok(api.c.get("/api/schedule/changes", headers=H("bob"), params={"from": "9999-12-31"}))["changes"] == []
    body = problem(api.c.get("/api/schedule/changes", headers=H("bob"),
                             params={"from": "0001-01-01T00:00:00+01:00", "to": "2030-01-01"}), 422)
    assert [e["path"] for e in body["errors"]] == ["from"], body
    body = problem(api.c.get("/api/schedule/releases", headers=H("bob")), 404)
    assert "changes" in body["detail"]  # names the schedules that exist
    problem(api.c.get("/api/schedule/changes"), 401)
