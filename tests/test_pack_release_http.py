"""Scenario tests of the ISO/IEC 20000 release and deployment process (issue 8, "Must show"), over the HTTP API.

The app is the one ``itsmflow serve`` runs (``server.build_app``, fixture ``iso`` of tests/test_pack_change.py):
the ISO 20000 pack applied for each organisation of that fixture — the example organisation
(``process_packs/iso20000/orgs/example/directory.yaml``, tokens ``demo-<user id>``) and Northwind's tailoring,
whose people and role names differ (the scenarios name the example organisation's people; ``Api`` maps them).
Releases and the changes that govern them are driven only through HTTP — start,
tasks, claim, complete, consultations, process instances, history — and the messages between them
(``release_rfc_requested``, ``release_change_approved``, ``release_outcome``) travel the way they do in
production (outbox, correlation property ``releaseRef``, buffer).

At every stage gate the candidates are the roles policy ``release_stage_roles`` (Table 21) gives the release's
CI type for that stage: the test reads them from the policy file, and asserts that the task names exactly
those roles, that it is in the inbox of exactly their holders, and that every other user of the directory is
refused (403) on claim and complete. Segregation-of-duties rules refuse holders of the role where they apply.

The only things done below the HTTP API are those ``itsmflow serve`` does by itself: applying a pack (the
shipped pack for a copy of the organisation whose tailoring sets an early-life support period of one second,
through ``engine.packs.apply`` as ``itsmflow pack apply`` does) and running the job executor when the early-life timer is due
(``engine.jobs.run_due``, which serve's background poll calls; helper ``fire_when_due``).

1. a full staged release with pilot (central application, major release), governed by a normal change
   approved over HTTP; the baselines and the early-life incident count reach the change's review;
2. a failed acceptance test returns the release to build; a gate then stops it, and the change records
   the cancelled release;
3. an unsuccessful live deployment is backed out, and the change's review sees the backed-out outcome;
4. an emergency release (infrastructure): no plan agreement, shortened acceptance with the policy's
   mandatory checks, no pilot, a post-hoc review due after the policy's deadline.

Element ids, form fields and roles are those of docs/traceability-release.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import yaml

from .packutil import organisation_with_policies
from .test_pack_change import (  # noqa: F401 - `iso` is the fixture: the app `itsmflow serve` runs
    ISO_PACK, SIGNIFICANT, WINDOW, Api, H, assert_closed, assessment, completed_by, completions,
    invalid, iso, new, ok, problem, reached, thrown,
)
from .test_pack_change import BUILT as CHANGE_BUILT
from .test_pack_change import PASSED as CHANGE_PASSED
from .test_pack_incident_http import fire_when_due, instances, waiting_at
from .test_pack_release_content import (
    A1_OK, A2_OK, A3_OK, AGREED, BASELINE_AFTER, BASELINE_BEFORE, BUILT, DEFINITION, DEPLOYED, EMERGENCY,
    EMERGENCY_CHECKS, LIVE_ACCEPT_OK, MEASURED, PILOT_ACCEPT_OK, PILOT_DEPLOYED, PILOT_RELEASE_OK,
    PILOT_REVIEW_OK, PLAN, PRE_OK, TEST_FAILED, TEST_OK,
)

# Who holds the roles of release and change management in the example organisation; checked by the fixtures.
ROLES = {
    "release-manager": {"oscar"},
    "deployment-manager": {"priya"},
    "test-manager": {"quentin"},
    "customer": {"tina"},
    "change-builder": {"frank", "heidi"},
    "configuration-manager": {"erin", "ivan"},
    "independent-tester": {"grace", "quentin"},
    "change-implementer": {"heidi", "ivan", "priya"},
    "service-owner": {"dave", "sam"},
    "service-level-manager": {"rachel"},
    "service-desk": {"judy", "ken"},
    "change-manager": {"bob"},
    "change-authority": {"alice", "carol", "dave"},
}
RELEASE_MANAGERS = ROLES["release-manager"]
DEPLOYMENT_MANAGERS = ROLES["deployment-manager"]
CONFIGURATION_MANAGERS = ROLES["configuration-manager"]
TESTERS = ROLES["independent-tester"]
MANAGERS = ROLES["change-manager"]

#: Table 21 as the pack ships it (policy release_stage_roles): ci type -> stage -> released_from / accepted_into
STAGE_ROLES = yaml.safe_load((ISO_PACK / "policies" / "release_stage_roles.yaml").read_text(encoding="utf-8"))[
    "ci_types"]
#: the test variant of the release policy: an early-life support period of one second
FAST = {"release_policy": {"early_life_support": {"period": "PT1S"}}}


@pytest.fixture
def api(iso):
    """The shipped pack, as `itsmflow serve` applies it; the cast of release and change management checked."""
    for role, users in ROLES.items():  # the same cast, in the organisation's people and role names
        assert holders(iso, [role]) == users, role
    return iso


@pytest.fixture
def fast(api, tmp_path):
    """The pack applied again for the organisation, with a tailoring that adds the one-second early-life period
    of ``FAST`` (a new version of its processes); releases started afterwards, and the changes their messages
    start, run on it."""
    org = organisation_with_policies(api.cast.directory, tmp_path / f"{api.cast.name}-fast-release", FAST)
    applied = api.engine.packs.apply(ISO_PACK, org, actor="admin")
    assert applied.created and applied.organisation == api.cast.name
    latest = {d["key"]: d["version"] for pack in ok(api.c.get("/api/packs", headers=H("admin")))
              for d in pack["definitions"]}
    assert latest["release_deployment"] == latest["change_normal"] == 2
    return api


# -- helpers ------------------------------------------------------------------------------------------
def holders(api: Api, roles: list[str]) -> set[str]:
    """Who holds one of the pack ``roles`` (named as in the example organisation)."""
    return {api.cast.back(u.id) for role in roles for u in api.engine.directory.users_with_role(api.role(role))}


def gate(api: Api, iid: str, key: str, user: str, variables: dict[str, Any], *, ci_type: str, stage: str,
         side: str, bad: tuple[dict[str, Any], tuple[str, ...]] | None = None) -> dict:
    """A stage gate: its candidates are the Table 21 roles of ``ci_type`` for ``stage`` (``side``:
    ``released_from`` or ``accepted_into``); exactly their holders have it in their inbox, every other user
    of the directory is refused on claim and complete (403); ``user`` completes it."""
    roles = STAGE_ROLES[ci_type]["stages"][stage][side]
    task = api.task(iid, key)
    assert task["candidateRoles"] == [api.role(r) for r in roles], (key, task["candidateRoles"], roles)
    inbox = holders(api, roles)
    assert user in inbox
    others = tuple(u for u in map(api.cast.back, api.users) if u not in inbox and u != "admin")
    return api.step(iid, key, user, variables, inbox=inbox, wrong=others, bad=bad)


def sod_refused(api: Api, iid: str, key: str, user: str, rule: str, variables: dict[str, Any]) -> None:
    """``user`` holds the task's role (it is in their inbox) but a segregation-of-duties rule refuses them."""
    task = api.task(iid, key)
    assert user in api.inbox(task)
    for resp in (api.claim(task["id"], user), api.complete(task["id"], user, variables)):
        assert rule in problem(resp, 403)["detail"]
    assert api.task(iid, key)["assignee"] is None


def received(events: list[dict], name: str) -> list[dict]:
    """Variables of the messages ``name`` an instance received (its audit trail over HTTP)."""
    return [e["data"]["variables"] for e in events if e["type"] == "message_received" and e["data"]["name"] == name]


def start_release(api: Api, definition: dict[str, Any], *, broken: dict[str, Any] | None = None) -> tuple[str, str]:
    """The release manager defines the release (first with the ``broken`` values, which the release policy
    refuses: back to the release manager, no RFC yet); it asks for its governing RFC (message
    ``release_rfc_requested``, which starts a ``change_normal`` instance) and waits for the change's
    approval. Returns (release id, change id)."""
    ref = definition["releaseRef"]
    rel = api.start("release_deployment", "oscar", {**definition, **(broken or {})}, ref)["id"]
    if broken:
        issues = api.instance(rel)["variables"]["release_policy_issues"]
        assert len(issues) == len(broken) and api.open_keys(rel) == ["revise_definition"], issues
        assert [c for c in instances(api, "change_normal") if c["businessKey"] == ref] == []
        api.step(rel, "revise_definition", "oscar", definition, inbox=RELEASE_MANAGERS, wrong=("priya", "bob"))
        assert api.instance(rel)["variables"]["release_policy_issues"] == []
    assert waiting_at(api, rel) == ["catch_change_approved"] and api.open_tasks(rel) == []
    [change] = [c for c in instances(api, "change_normal") if c["variables"].get("releaseRef") == ref]
    v = api.instance(change["id"])["variables"]
    assert (v["changeRef"], v["linkedRecords"], v["relatedRfcs"]) == (f"RFC-{ref}", {"release": ref},
                                                                       definition["relatedRfcs"])
    assert v["summary"] == definition["summary"] and v["knownErrorsFixed"] == definition["knownErrorsFixed"]
    assert api.open_keys(change["id"]) == ["classify"]
    return rel, change["id"]


def approve_change(api: Api, rel: str, cid: str, authority: str = "carol") -> None:
    """The governing change is classified, assessed (with a cost estimate, so a single change authority
    decides) and approved over HTTP; its approval reaches the release, which goes on to planning."""
    api.step(cid, "classify", "bob", SIGNIFICANT, inbox=MANAGERS, wrong=("oscar",))
    api.step(cid, "assess", "bob", {**assessment("medium"), "estimatedCost": 3000}, inbox=MANAGERS,
             consulted_by="erin")
    assert api.instance(cid)["variables"]["required_authority"] == "change-authority"
    # the release manager may not approve the change that governs his release
    api.step(cid, "authorise", authority, {"decision": "approved"}, inbox=ROLES["change-authority"],
             wrong=("oscar", "priya"))
    assert api.open_keys(cid) == ["schedule"]
    ref = api.instance(rel)["variables"]["releaseRef"]
    assert received(api.history(rel), "release_change_approved") == [
        {"releaseRef": ref, "changeDecision": "approved", "changeRef": f"RFC-{ref}"}]
    assert api.open_keys(rel) == ["plan_release"]
    assert "release_change_approved" in thrown(api.history(cid))


def plan(api: Api, rel: str, *, agreed: bool = True) -> None:
    api.step(rel, "plan_release", "oscar", PLAN, inbox=RELEASE_MANAGERS, wrong=("priya", "tina", "bob"))
    if agreed:  # the customer agrees the plans for the interested parties
        api.step(rel, "agree_plan", "tina", AGREED, inbox=ROLES["customer"], wrong=("oscar", "rachel"),
                 bad=({"decision": "rejected"}, ("$.reason",)))


def to_acceptance_test(api: Api, rel: str, ci_type: str, *, builder: str, pre_releaser: str) -> None:
    """Design and build → pre-acceptance test → controlled acceptance test environment."""
    gate(api, rel, "build_release", builder, BUILT, ci_type=ci_type, stage="pre_acceptance_test",
         side="released_from")
    gate(api, rel, "accept_pre_acceptance", "oscar", A1_OK, ci_type=ci_type, stage="pre_acceptance_test",
         side="accepted_into", bad=({**A1_OK, "obligationsMet": False}, ("$.obligationsMet",)))
    gate(api, rel, "release_from_pre_acceptance", pre_releaser, PRE_OK, ci_type=ci_type, stage="acceptance_test",
         side="released_from")
    gate(api, rel, "accept_acceptance", "quentin", A2_OK, ci_type=ci_type, stage="acceptance_test",
         side="accepted_into")


def change_implements(api: Api, cid: str, deploy: dict[str, Any]) -> None:
    """The governing change's own steps after approval; its implementer records the release's deployment."""
    api.step(cid, "schedule", "bob", WINDOW, inbox=MANAGERS, wrong=("oscar",))
    api.step(cid, "build", "heidi", CHANGE_BUILT, inbox=ROLES["change-builder"])
    api.step(cid, "test", "grace", CHANGE_PASSED, inbox=TESTERS, wrong=("heidi",))
    api.step(cid, "confirm_window", "ivan", {"windowDecision": "proceed"}, inbox=ROLES["change-implementer"])
    api.step(cid, "deploy", "priya", deploy, inbox=ROLES["change-implementer"], wrong=("oscar",))


def change_backs_out(api: Api, cid: str, actions: str) -> None:
    api.step(cid, "backout", "priya", {"remediationAction": "reversed", "actionsTaken": actions,
                                       "followedPlan": True, "configurationRestored": True},
             inbox=ROLES["change-implementer"], wrong=("oscar",))


def review_sees(api: Api, cid: str, key: str, expected: dict[str, Any]) -> dict:
    """The change waits at its review ``key`` with the release's outcome in its data (instance variables) and
    the early-life incidents pre-filled in the review's form; returns the variables."""
    assert api.open_keys(cid) == [key]
    variables = api.instance(cid)["variables"]
    assert {k: variables.get(k) for k in expected} == expected
    assert variables["incidentsSinceImplementation"] == variables["earlyLifeIncidents"]
    form = api.form(api.task(cid, key)["id"], "bob")
    assert form["data"]["incidentsSinceImplementation"] == variables["earlyLifeIncidents"]
    return variables


# -- 1. full staged release with pilot ----------------------------------------------------------------
def test_full_staged_release_with_pilot_governed_by_a_change(fast):
    api, ci = fast, "central_application"
    # the start form refuses an incomplete definition; nothing starts
    invalid(api.c.post("/api/process-definitions/key/release_deployment/start", headers=H("oscar"),
                       json={"variables": {**DEFINITION, "summary": "", "colour": "red"}}),
            "$.summary", "$.colour")
    assert instances(api, "release_deployment") == [] and instances(api, "change_normal") == []
    rel, cid = start_release(api, DEFINITION)  # major release: piloted (policy release_policy)
    v = api.instance(rel)["variables"]
    assert (v["pilot_required"], v["is_emergency"], v["releaseStatus"]) == (True, False, "planned")
    assert v["content_freeze_at"] == "2030-03-04T20:00:00+00:00"

    approve_change(api, rel, cid)
    plan(api, rel)
    to_acceptance_test(api, rel, ci, builder="frank", pre_releaser="erin")
    api.step(rel, "acceptance_test", "grace", TEST_OK, inbox=TESTERS, wrong=("frank", "oscar"),
             bad=({**TEST_OK, "backOutTested": False}, ("$.backOutTested",)))
    # pilot: released from acceptance into pilot, accepted into pilot, deployed, accepted by the provider
    gate(api, rel, "release_into_pilot", "ivan", PILOT_RELEASE_OK, ci_type=ci, stage="pilot", side="released_from")
    gate(api, rel, "accept_into_pilot", "dave", PILOT_ACCEPT_OK, ci_type=ci, stage="pilot", side="accepted_into")
    api.step(rel, "pilot_deploy", "priya", PILOT_DEPLOYED, inbox=DEPLOYMENT_MANAGERS, wrong=("oscar", "dave"))
    api.step(rel, "review_pilot", "sam", PILOT_REVIEW_OK, inbox=ROLES["service-owner"], wrong=("priya", "oscar"))
    # live
    gate(api, rel, "release_into_live", "erin", A3_OK, ci_type=ci, stage="live", side="released_from")
    gate(api, rel, "accept_into_live", "dave", LIVE_ACCEPT_OK, ci_type=ci, stage="live", side="accepted_into")
    api.step(rel, "baseline_before", "ivan", BASELINE_BEFORE, inbox=CONFIGURATION_MANAGERS, wrong=("priya",))
    api.step(rel, "deploy_live", "priya", DEPLOYED, inbox=DEPLOYMENT_MANAGERS, wrong=("oscar", "erin"))
    api.step(rel, "baseline_after", "erin", BASELINE_AFTER, inbox=CONFIGURATION_MANAGERS, wrong=("priya",))
    # early-life support: the release waits for the period of policy release_policy
    assert waiting_at(api, rel) == ["wait_early_life"] and api.open_tasks(rel) == []
    assert api.instance(rel)["variables"]["early_life_period"] == "PT1S"

    # meanwhile the change records the deployment and waits for the release's outcome before its review
    change_implements(api, cid, {"outcome": "successful", "implementationNotes": "Release 10.2 deployed.",
                                 "actualStart": "2030-03-09T20:02:00Z", "actualEnd": "2030-03-09T22:10:00Z"})
    assert waiting_at(api, cid) == ["catch_release_outcome"] and api.open_tasks(cid) == []

    fire_when_due(api, rel, "wait_early_life")
    api.step(rel, "measure_release", "oscar", MEASURED, inbox=RELEASE_MANAGERS, wrong=("priya", "bob"),
             bad=({k: v for k, v in MEASURED.items() if k != "earlyLifeIncidents"}, ("$.earlyLifeIncidents",)))
    instance = assert_closed(api, rel)
    assert instance["variables"]["gateFailures"] == [] and instance["variables"]["buildIteration"] == 1

    # the outcome reached the waiting change: baselines and early-life incidents are data of its review
    variables = review_sees(api, cid, "pir", {
        "releaseStatus": "closed", "outcome": "successful", "earlyLifeIncidents": 3, "pir_required": True,
        "baselineBefore": BASELINE_BEFORE["baselineBefore"], "baselineAfter": BASELINE_AFTER["baselineAfter"],
        "comparisonReport": BASELINE_AFTER["comparisonReport"]})
    assert variables["impactAnalysis"] == MEASURED["impactAnalysis"]
    api.step(cid, "pir", "bob", {"reviewOutcome": "objectives_met", "lessonsLearned": "Warm the cache first.",
                                 "documentationComplete": True, "incidentsSinceImplementation": 3},
             inbox=MANAGERS, wrong=("oscar", "priya"))
    assert_closed(api, cid)

    events = api.history(rel)
    assert events[0]["type"] == "process_started" and events[0]["actor"] == "oscar"
    assert completed_by(events) == [
        ("plan_release", "oscar"), ("agree_plan", "tina"), ("build_release", "frank"),
        ("accept_pre_acceptance", "oscar"), ("release_from_pre_acceptance", "erin"), ("accept_acceptance", "quentin"),
        ("acceptance_test", "grace"), ("release_into_pilot", "ivan"), ("accept_into_pilot", "dave"),
        ("pilot_deploy", "priya"), ("review_pilot", "sam"), ("release_into_live", "erin"),
        ("accept_into_live", "dave"), ("baseline_before", "ivan"), ("deploy_live", "priya"),
        ("baseline_after", "erin"), ("measure_release", "oscar")]
    for key in ("accept_pre_acceptance", "release_from_pre_acceptance", "accept_acceptance", "release_into_pilot",
                "accept_into_pilot", "review_pilot", "release_into_live", "accept_into_live"):
        [decided] = completions(events, key)  # what each gate decided, as submitted (evidence of the sign-off)
        assert decided["data"]["submitted"]["decision"] == "approved", key
    # the roles each gate was offered to are in the trail (Table 21 for a central application)
    offered = {e["activityId"]: e["data"]["candidateRoles"] for e in events if e["type"] == "task_created"}
    assert offered["release_from_pre_acceptance"] == offered["release_into_live"] == [api.role("configuration-manager")]
    assert offered["accept_acceptance"] == [api.role("test-manager")]
    assert offered["accept_into_live"] == [api.role("service-owner")]
    assert new(completions(events, "baseline_before")[0], "baselineBefore")["baselineId"] == "BL-PROD-120"
    assert thrown(events) == ["release_rfc_requested", "configuration_update", "release_outcome"]
    assert reached(events, "end_closed")

    change_events = api.history(cid)
    [outcome] = received(change_events, "release_outcome")
    assert (outcome["releaseStatus"], outcome["earlyLifeIncidents"]) == ("closed", 3)
    assert outcome["baselineBefore"]["baselineId"] == "BL-PROD-120"
    assert outcome["baselineAfter"]["baselineId"] == "BL-PROD-121"
    got = [e for e in change_events if e["type"] == "message_received" and e["data"]["name"] == "release_outcome"]
    assert got[0]["activityId"] == "catch_release_outcome"
    assert not any(e["type"] == "buffered_message_delivered" for e in change_events)  # it was waiting
    [reviewed] = completions(change_events, "pir")
    assert reviewed["actor"] == "bob" and reached(change_events, "end_closed")
    assert completed_by(change_events)[:3] == [("classify", "bob"), ("assess", "bob"), ("authorise", "carol")]


# -- 2. failed acceptance test → back to build; a gate stops the release -------------------------------
def test_failed_acceptance_test_returns_to_build_then_a_gate_stops_the_release(api):
    ci = "it_service"
    definition = {**DEFINITION, "releaseRef": "REL-2030-015", "releaseType": "minor", "ciType": ci}
    rel, cid = start_release(api, definition)
    assert api.instance(rel)["variables"]["pilot_required"] is False  # minor, phased: no pilot
    approve_change(api, rel, cid, authority="dave")
    plan(api, rel)
    to_acceptance_test(api, rel, ci, builder="heidi", pre_releaser="frank")
    # the acceptance test fails (the form wants the failures) and the release goes back to design and build
    api.step(rel, "acceptance_test", "grace", TEST_FAILED, inbox=TESTERS, wrong=("heidi", "oscar"),
             bad=({k: v for k, v in TEST_FAILED.items() if k != "testFailures"}, ("$.testFailures",)))
    assert api.open_keys(rel) == ["build_release"]
    v = api.instance(rel)["variables"]
    assert v["gateFailures"] == [{"stage": "acceptance_test", "iteration": 1, "action": "back_to_build",
                                  "reason": TEST_FAILED["testFailures"]}]
    assert (v["buildIteration"], v["releaseStatus"], v["testResult"]) == (2, "in_build", None)

    # second round: built and accepted again through every gate of the first
    to_acceptance_test(api, rel, ci, builder="frank", pre_releaser="heidi")
    api.step(rel, "acceptance_test", "quentin", TEST_OK, inbox=TESTERS, wrong=("frank",))
    assert api.open_keys(rel) == ["release_into_live"]
    gate(api, rel, "release_into_live", "priya", A3_OK, ci_type=ci, stage="live", side="released_from")
    # the live support side refuses and stops the release (a rejection needs a reason and what to do)
    stop = {"decision": "rejected", "reason": "The customer withdrew the service.", "failAction": "stop"}
    gate(api, rel, "accept_into_live", "rachel", stop, ci_type=ci, stage="live", side="accepted_into",
         bad=({"decision": "rejected", "reason": stop["reason"]}, ("$.failAction",)))
    instance = assert_closed(api, rel)
    v = instance["variables"]
    assert [(f["stage"], f["action"]) for f in v["gateFailures"]] == [("acceptance_test", "back_to_build"),
                                                                      ("live", "stop")]
    assert (v["releaseStatus"], v["outcome"]) == ("cancelled", "unsuccessful")

    events = api.history(rel)
    assert [a for a, _ in completed_by(events)].count("build_release") == 2
    [failed, passed] = completions(events, "acceptance_test")
    assert (failed["actor"], new(failed, "testResult")) == ("grace", "failed")
    assert (passed["actor"], new(passed, "testResult")) == ("quentin", "passed")
    assert failed["at"] < completions(events, "build_release")[1]["at"] < passed["at"]
    [stopped] = completions(events, "accept_into_live")
    assert stopped["actor"] == "rachel" and new(stopped, "failAction") == "stop"
    assert reached(events, "return_to_build") and reached(events, "end_stopped")
    assert not completions(events, "baseline_before")
    assert thrown(events) == ["release_rfc_requested", "release_outcome"]  # no configuration update

    # the change hears of the cancellation when it reaches its review (the outcome waits in the buffer)
    change_implements(api, cid, {"outcome": "unsuccessful", "implementationNotes": "Nothing deployed.",
                                 "failureReason": "The release was stopped at the live gate."})
    change_backs_out(api, cid, "Nothing to reverse; the release never reached live.")
    review_sees(api, cid, "pir", {"releaseStatus": "cancelled", "stoppedAtStage": "live", "earlyLifeIncidents": 0,
                                  "outcome": "unsuccessful", "reason": stop["reason"], "gateFailures": 2})
    change_events = api.history(cid)
    assert any(e["type"] == "buffered_message_delivered" and e["activityId"] == "catch_release_outcome"
               for e in change_events)


# -- 3. unsuccessful live deployment backed out; the change records it --------------------------------
def test_unsuccessful_live_deployment_is_backed_out_and_the_change_records_it(api):
    ci = "it_service"
    definition = {**DEFINITION, "releaseRef": "REL-2030-016", "releaseType": "minor", "ciType": ci}
    # defined against the release policy: an unknown release type and CI type go back to the release manager
    rel, cid = start_release(api, definition, broken={"releaseType": "hotfix", "ciType": "mainframe"})
    approve_change(api, rel, cid)
    plan(api, rel)
    to_acceptance_test(api, rel, ci, builder="heidi", pre_releaser="frank")
    api.step(rel, "acceptance_test", "grace", TEST_OK, inbox=TESTERS, wrong=("heidi",))
    gate(api, rel, "release_into_live", "oscar", A3_OK, ci_type=ci, stage="live", side="released_from")
    gate(api, rel, "accept_into_live", "rachel", LIVE_ACCEPT_OK, ci_type=ci, stage="live", side="accepted_into")
    api.step(rel, "baseline_before", "erin", BASELINE_BEFORE, inbox=CONFIGURATION_MANAGERS, wrong=("oscar",))
    failed = {"outcome": "unsuccessful", "deploymentLog": "Paris failed.", "targetsPlanned": 2,
              "targetsSucceeded": 1, "failureReason": "Schema migration timed out."}
    api.step(rel, "deploy_live", "priya", failed, inbox=DEPLOYMENT_MANAGERS, wrong=("oscar", "ivan"),
             bad=({k: v for k, v in failed.items() if k != "failureReason"}, ("$.failureReason",)))
    assert api.open_keys(rel) == ["backout"]
    backout = {"remediationAction": "reversed", "actionsTaken": "Redeployed 10.1, restored schema 41.",
               "followedPlan": True, "configurationRestored": True,
               "failureInvestigation": "Lock contention on the orders table.", "incidentsRaised": 2,
               "incidentReferences": ["INC-7", "INC-8"], "followUpActions": ["Rehearse the migration on a copy"]}
    api.step(rel, "backout", "priya", backout, inbox=DEPLOYMENT_MANAGERS, wrong=("oscar", "bob"),
             bad=({k: v for k, v in backout.items() if k != "followedPlan"}, ("$.followedPlan",)))
    instance = assert_closed(api, rel)
    assert instance["variables"]["outcome"] == "unsuccessful"
    events = api.history(rel)
    assert completed_by(events)[-3:] == [("baseline_before", "erin"), ("deploy_live", "priya"), ("backout", "priya")]
    [backed_out] = completions(events, "backout")
    assert new(backed_out, "followedPlan") is True and new(backed_out, "remediationAction") == "reversed"
    assert reached(events, "end_backed_out") and not completions(events, "baseline_after")
    assert thrown(events) == ["release_rfc_requested", "release_outcome"]  # live unchanged: no CMDB update

    # the change's implementer records the failed deployment and its back-out; the release's outcome,
    # kept for the change until it waits for it, reaches its review
    change_implements(api, cid, {"outcome": "unsuccessful", "implementationNotes": "Release backed out.",
                                 "failureReason": "Schema migration timed out."})
    assert waiting_at(api, cid) == ["backout"]
    change_backs_out(api, cid, "Release 10.1 back in live.")
    variables = review_sees(api, cid, "pir", {
        "releaseStatus": "backed_out", "outcome": "unsuccessful", "earlyLifeIncidents": 2, "pir_required": True,
        "failureInvestigation": "Lock contention on the orders table.",
        "baselineBefore": BASELINE_BEFORE["baselineBefore"]})
    assert variables["scheduleState"] == "backed-out"
    api.step(cid, "pir", "bob", {"reviewOutcome": "not_met", "lessonsLearned": "Rehearse the migration.",
                                 "documentationComplete": True, "incidentsSinceImplementation": 2},
             inbox=MANAGERS, wrong=("priya",))
    instance = assert_closed(api, cid)
    assert instance["variables"]["incidentsSinceImplementation"] == 2

    change_events = api.history(cid)
    [outcome] = received(change_events, "release_outcome")
    assert (outcome["releaseRef"], outcome["releaseStatus"], outcome["failureReason"]) == (
        "REL-2030-016", "backed_out", "Schema migration timed out.")
    delivered = [e for e in change_events if e["type"] == "buffered_message_delivered"]
    assert [e["activityId"] for e in delivered] == ["catch_release_outcome"]
    [change_backout] = completions(change_events, "backout")
    [review] = completions(change_events, "pir")
    assert change_backout["at"] <= delivered[0]["at"] <= review["at"]
    assert (review["actor"], new(review, "reviewOutcome")) == ("bob", "not_met")
    assert "configuration_update" not in thrown(change_events) and reached(change_events, "end_closed")


# -- 4. emergency release -----------------------------------------------------------------------------
def test_emergency_release_per_policy(fast):
    api, ci = fast, "infrastructure"
    rel, cid = start_release(api, EMERGENCY)
    v = api.instance(rel)["variables"]
    # policy release_policy: an emergency type never gets a pilot (even when asked for), and the change's
    # approval stands for the customer's plan agreement
    assert (v["is_emergency"], v["pilot_required"], v["skip_plan_agreement"]) == (True, False, True)
    assert api.instance(cid)["variables"]["emergency"] is True
    approve_change(api, rel, cid)
    plan(api, rel, agreed=False)
    assert api.open_keys(rel) == ["build_release"]

    gate(api, rel, "build_release", "heidi", BUILT, ci_type=ci, stage="pre_acceptance_test", side="released_from")
    assert api.open_keys(rel) == ["accept_emergency"]  # no pre-acceptance stage: the shortened acceptance
    shortened = {"decision": "approved", "acceptanceEnvironment": "production_maintenance_slot",
                 "emergencyChecks": EMERGENCY_CHECKS}
    # heidi holds the accepting role too, but built the release
    sod_refused(api, rel, "accept_emergency", "heidi", "release-builder-not-acceptance-acceptor", shortened)
    # a check the policy makes mandatory is not confirmed: back to build
    gate(api, rel, "accept_emergency", "ivan",
         {**shortened, "emergencyChecks": {**EMERGENCY_CHECKS, "configurationDataUpdated": False}},
         ci_type=ci, stage="acceptance_test", side="accepted_into")
    assert api.open_keys(rel) == ["build_release"]
    [failure] = api.instance(rel)["variables"]["gateFailures"]
    assert failure["action"] == "back_to_build" and "configurationDataUpdated" in failure["reason"]
    gate(api, rel, "build_release", "frank", BUILT, ci_type=ci, stage="pre_acceptance_test", side="released_from")
    gate(api, rel, "accept_emergency", "priya", shortened, ci_type=ci, stage="acceptance_test",
         side="accepted_into")
    assert api.instance(rel)["variables"]["deferredChecks"] == [
        "documentationControlled", "partiesInformed", "trainingAndCommunicationPlanned"]
    api.step(rel, "acceptance_test", "quentin", TEST_OK, inbox=TESTERS, wrong=("frank",))
    assert api.open_keys(rel) == ["release_into_live"]  # no pilot
    gate(api, rel, "release_into_live", "ivan", A3_OK, ci_type=ci, stage="live", side="released_from")
    sod_refused(api, rel, "accept_into_live", "ivan", "release-live-releaser-not-acceptor", LIVE_ACCEPT_OK)
    gate(api, rel, "accept_into_live", "heidi", LIVE_ACCEPT_OK, ci_type=ci, stage="live", side="accepted_into")
    api.step(rel, "baseline_before", "erin", BASELINE_BEFORE, inbox=CONFIGURATION_MANAGERS)
    api.step(rel, "deploy_live", "priya", DEPLOYED, inbox=DEPLOYMENT_MANAGERS, wrong=("oscar",))
    api.step(rel, "baseline_after", "erin", BASELINE_AFTER, inbox=CONFIGURATION_MANAGERS)

    # post-hoc review of the deferred checks, due after the policy's deadline (emergency.review_deadline P5D)
    review = api.task(rel, "emergency_review")
    created = datetime.fromisoformat(review["createdAt"].replace("Z", "+00:00"))
    assert datetime.fromisoformat(review["due"].replace("Z", "+00:00")) - created == timedelta(days=5)
    form = api.form(review["id"], "oscar")
    assert "deferredChecksCompleted" in form["schema"]["properties"]
    api.step(rel, "emergency_review", "oscar", {
        "deferredChecksCompleted": True, "deferredChecksEvidence": "Comms sent; docs filed under CM.",
        "emergencyJustified": True, "justificationRationale": "Active exploitation.", "documentationComplete": True},
        inbox=RELEASE_MANAGERS, wrong=("priya", "ivan", "bob"))
    assert waiting_at(api, rel) == ["wait_early_life"]

    change_implements(api, cid, {"outcome": "successful", "implementationNotes": "Firmware 7.4.2 live."})
    fire_when_due(api, rel, "wait_early_life")
    api.step(rel, "measure_release", "oscar", {**MEASURED, "earlyLifeIncidents": 1, "incidentReferences": ["INC-9"]},
             inbox=RELEASE_MANAGERS, wrong=("priya",))
    assert_closed(api, rel)
    review_sees(api, cid, "pir", {"releaseStatus": "closed", "emergency": True, "earlyLifeIncidents": 1,
                                  "gateFailures": 1, "baselineAfter": BASELINE_AFTER["baselineAfter"]})

    events = api.history(rel)
    assert completed_by(events) == [
        ("plan_release", "oscar"), ("build_release", "heidi"), ("accept_emergency", "ivan"),
        ("build_release", "frank"), ("accept_emergency", "priya"), ("acceptance_test", "quentin"),
        ("release_into_live", "ivan"), ("accept_into_live", "heidi"), ("baseline_before", "erin"),
        ("deploy_live", "priya"), ("baseline_after", "erin"), ("emergency_review", "oscar"),
        ("measure_release", "oscar")]
    assert not reached(events, "agree_plan") and not reached(events, "accept_pre_acceptance")
    assert not reached(events, "release_into_pilot")
    offered = {e["activityId"]: e["data"]["candidateRoles"] for e in events if e["type"] == "task_created"}
    assert offered["accept_emergency"] == offered["accept_into_live"] == [api.role("change-implementer")]
    assert offered["release_into_live"] == [api.role("configuration-manager")]
