"""Scenario tests of the ISO/IEC 20000 resolution processes (issue 7, "Must show"), over the HTTP API.

The app is the one ``itsmflow serve`` runs (``server.build_app``, fixture ``iso`` of tests/test_pack_change.py):
the ISO 20000 pack applied with the example organisation (``process_packs/iso20000/orgs/example/directory.yaml``,
tokens ``demo-<user id>``). The processes are driven only through HTTP endpoints — start, tasks, claim,
complete, consultations, messages, process instances, history, notifications — and at each human task the
scenario asserts who could act (the inbox of exactly the holders of the RACI-responsible role, or the assignee
the process named; 403 for a user without the role, 409 for another holder of the role when the process
assigned the task) and that the audit trail names actor, decision and timestamps, with a verified hash chain.

The only things done below the HTTP API are those ``itsmflow serve`` does by itself: applying a pack (here the
shipped pack with a test tailoring of the example organisation whose policies have short times, through
``engine.packs.apply`` as ``itsmflow pack apply`` does) and running the job executor when a timer is due (``engine.jobs.run_due``, what
serve's background poll calls). Timers are not moved: a test waits until the due time the engine computed from
the policy, then runs the executor, and checks that the timer fired then and not before.

1. a P1 incident breaching its target escalates on time (warning, then hierarchic escalation), while the
   resolution work goes on (non-interrupting);
2. incident → major incident → problem → RFC (a ``change_normal`` instance carrying the problem reference) →
   change successful → problem closed;
3. a service request spawning a pre-approved change (and one naming a suspended model, which does not);
4. the handover of the major incident manager role, recorded in the history (who handed over to whom, when),
   with the communication cadence following the new manager.

Element ids, form fields and roles are those of docs/traceability-incident-problem.md.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from typing import Any

import isodate
import pytest
import yaml
from sqlalchemy import select

from itsmflow.engine.clock import as_utc, utcnow
from itsmflow.engine.storage.models import Job

from .test_pack_change import (  # noqa: F401 - `iso` is the fixture: the app `itsmflow serve` runs
    EXAMPLE_ORG, ISO_PACK, ROLES as CHANGE_ROLES, SIGNIFICANT, WINDOW, Api, H, assert_closed, assessment,
    build_test_deploy, completed_by, completions, invalid, iso, new, ok, problem, reached, thrown,
)
from .test_pack_incident_content import INCIDENT, MAJOR_CLASSIFY

# The example organisation only: `iso` also runs the change scenarios for Northwind's tailoring, which gives
# these four processes nothing but its own role and user names.
pytestmark = pytest.mark.parametrize("iso", ["example"], indirect=True)

# Who holds the roles of these processes (and of the change processes) in the example organisation; checked by
# the fixtures.
ROLES = {
    **CHANGE_ROLES,
    "service-desk": {"judy", "ken"},
    "incident-manager": {"laura", "mike"},
    "major-incident-manager": {"mike", "uma"},
    "problem-manager": {"nina"},
    "customer": {"tina"},
    "service-owner": {"dave", "sam"},
    "service-level-manager": {"rachel"},
}
DESK = ROLES["service-desk"]
INCIDENT_MANAGERS = ROLES["incident-manager"]
MIMS = ROLES["major-incident-manager"]
PROBLEM_MANAGERS = ROLES["problem-manager"]
CUSTOMERS = ROLES["customer"]
IMPLEMENTERS = ROLES["change-implementer"]

#: the test variant of the pack's policies: P1 targets of seconds, a status update every second
FAST = {
    "incident_targets": {"targets": {"P1": {"response": "PT1S", "warn_after": "PT1S", "resolution": "PT4S"}}},
    "major_incident": {"communication": {"status_update_interval": "PT1S"}},
}


def check_roles(api: Api) -> Api:
    for role, users in ROLES.items():
        assert {u.id for u in api.engine.directory.users_with_role(role)} == users, role
    return api


@pytest.fixture
def api(iso):
    """The shipped pack, as `itsmflow serve` applies it."""
    return check_roles(iso)


@pytest.fixture
def fast(iso, tmp_path):
    """The pack applied again (``engine.packs.apply``, as ``itsmflow pack apply`` does) for the example
    organisation with a tailoring that sets the short times of ``FAST`` (docs/tailoring.md: policies merge key
    by key into the pack's): a new version of the processes, on which instances started afterwards, through the
    API or by messages, run."""
    org = tmp_path / "example-fast"
    org.mkdir()
    shutil.copy(EXAMPLE_ORG / "directory.yaml", org / "directory.yaml")
    (org / "organisation.yaml").write_text("name: example\n", encoding="utf-8")
    (org / "tailoring.yaml").write_text(yaml.safe_dump({
        "pack": "iso20000", "description": "Short policy times for the scenario tests.", "policies": FAST}),
        encoding="utf-8")
    result = iso.engine.packs.apply(ISO_PACK, org, actor="admin")
    assert result.created and result.organisation == "example"
    [applied] = ok(iso.c.get("/api/packs", headers=H("admin")))
    versions = {d["key"]: d["version"] for d in applied["definitions"]}
    assert versions["incident"] == versions["major_incident"] == 2
    return check_roles(iso)


# -- helpers ------------------------------------------------------------------------------------------
def instances(api: Api, key: str) -> list[dict]:
    return ok(api.c.get("/api/process-instances", headers=H("admin"), params={"definitionKey": key}))


def waiting_at(api: Api, iid: str) -> list[str]:
    return sorted(a["activityId"] for a in api.instance(iid)["activeActivities"])


def timer_job_due(api: Api, iid: str, activity: str) -> datetime:
    """When the engine will fire the (single) timer of ``activity`` in the instance."""
    with api.engine.db.connect() as conn:
        [due] = conn.execute(select(Job.due_at).where(Job.job_type == "timer", Job.instance_id == iid,
                                                      Job.activity_id == activity)).scalars().all()
    return as_utc(due)


def fire_when_due(api: Api, iid: str, activity: str) -> dict:
    """Wait until the timer of ``activity`` is due, run the job executor (what `itsmflow serve` polls), and
    return the ``timer_fired`` audit event: it fired at or after its due time."""
    due = timer_job_due(api, iid, activity)
    while (left := (due - utcnow()).total_seconds()) > 0:
        time.sleep(left)
    assert api.engine.jobs.run_due() >= 1
    fired = [e for e in api.history(iid) if e["type"] == "timer_fired" and e["activityId"] == activity]
    assert fired, f"timer {activity} did not fire"
    event = fired[-1]
    assert event["actor"] == "engine"
    assert datetime.fromisoformat(event["data"]["due"]) == due
    assert datetime.fromisoformat(event["data"]["firedAt"]) >= due  # never before the time the policy gives
    return event


def at(event: dict) -> datetime:
    return datetime.fromisoformat(event["at"].replace("Z", "+00:00"))


def events_of(events: list[dict], kind: str, activity: str) -> list[dict]:
    return [e for e in events if e["type"] == kind and e["activityId"] == activity]


def notified(api: Api, user: str, iid: str, activity: str) -> list[str]:
    """Types of the notifications ``user`` got about ``activity`` of the instance (their own token)."""
    return sorted(n["type"] for n in ok(api.c.get("/api/notifications", headers=H(user)))
                  if n["processInstanceId"] == iid and n["activityId"] == activity)


def consult_then_complete(api: Api, iid: str, key: str, user: str, variables: dict[str, Any],
                          opinions: dict[str, str], *, inbox: set[str]) -> None:
    """A task whose consultation is required: completion is refused (409) until every consulted role
    (``opinions``: role → a holder) has given an opinion; then ``user`` completes it."""
    task = api.task(iid, key)
    assert api.inbox(task) == inbox
    ok(api.claim(task["id"], user), 204)
    pending = problem(api.complete(task["id"], user, variables), 409)["detail"]
    assert pending.startswith("consultation pending: ") and all(role in pending for role in opinions), pending
    for role, holder in opinions.items():
        recorded = ok(api.consult(task["id"], holder, f"{holder}: my view as {role}"), 201)
        assert (role, holder) in [(o["role"], o["userId"]) for o in recorded]
    ok(api.complete(task["id"], user, variables))


# -- records ------------------------------------------------------------------------------------------
P1_CLASSIFY = {"category": "application", "impact": "high", "urgency": "high", "usersAffected": 40,
               "criticalService": False, "securityRelated": False,
               "businessImpactNote": "The payroll team cannot run the monthly payment."}
ESCALATE_TO_THIRD_LINE = {
    "knownErrorChecked": True, "knownErrorMatch": "no_match", "recentChangesChecked": True,
    "similarIncidents": [], "diagnosis": "Login fails after the token service upgrade; no known error matches.",
    "resolutionResult": "escalate", "escalationReason": "additional_knowledge_needed", "escalateTo": "third-line",
    "assignedSpecialists": ["ivan"], "userToldLikelyResolution": True,
}
TAKE_CHARGE = {"majorIncidentManager": "mike", "impactStatement": "Nobody can sign in to payroll on pay day.",
               "servicesAffected": ["payroll"], "workstreams": [{"team": "identity", "lead": "laura"}],
               "notificationsSent": True, "notifiedParties": ["customer", "top_management", "service_desk"]}
RECOVERED = {"restorationSummary": "Token service restarted with the previous configuration.",
             "restoredAt": "2030-01-31T10:40:00Z"}
RESTORED = {"coordinationAction": "service_restored", "customerConfirmedRestoration": True,
            "finalCommunication": "Payroll is available again; the root cause follows through problem management."}
REVIEW = {"reviewOutcome": "improvements_needed", "lessonsLearned": "Open the vendor bridge at declaration.",
          "reviewChair": "Laura Rossi", "communicationEffective": True, "handoversEffective": True}
RFC = {"summary": "Expire token sessions after 8 hours", "description": "Configure the session cache expiry.",
       "purpose": "Removes the root cause of the payroll major incident.", "affectedServices": ["payroll"],
       "affectedCis": [{"ciId": "token-svc", "ciType": "application"}], "impactedCustomers": ["Finance"],
       "requestedPriority": "high", "initialRisk": "medium", "impactDescription": "One restart of the service.",
       "estimatedCost": 2000, "backOutPlan": {"approach": "reverse", "steps": "Remove the expiry setting."}}


# -- 1. P1 incident: warning and breach escalation on time, while the work goes on -----------------------
def test_p1_incident_breaching_its_target_escalates_on_time_while_work_goes_on(fast):
    api = fast
    invalid(api.c.post("/api/process-definitions/key/incident/start", headers=H("judy"),
                       json={"variables": {**INCIDENT, "reportedVia": "pigeon"}}), "$.reportedVia")
    iid = api.start("incident", "judy", {**INCIDENT, "incidentRef": "INC-7001"}, "INC-7001")["id"]

    before = utcnow()
    api.step(iid, "classify", "judy", P1_CLASSIFY, inbox=DESK, wrong=("laura", "tina"),
             bad=({**P1_CLASSIFY, "impact": "severe"}, ("$.impact",)))
    after = utcnow()
    variables = api.instance(iid)["variables"]
    # impact x urgency (policy incident_priority) → P1; its targets come from the applied policy variant
    assert (variables["priority"], variables["warn_after"], variables["breach_after"]) == ("P1", "PT1S", "PT4S")
    assert variables["policies"]["incident_targets"]["targets"]["P1"]["resolution"] == "PT4S"
    assert variables["breach_escalation_to"] == "service-owner" and variables["inform_customer_on_breach"] is True
    assert variables["major_incident"] is False  # P1, but no criterion of policy major_incident met
    # the target clock runs from the start of the resolution work: the timers are armed with the policy's times
    for activity, duration in (("target_warning", "PT1S"), ("target_breached", "PT4S")):
        due = timer_job_due(api, iid, activity)
        assert before + isodate.parse_duration(duration) <= due <= after + isodate.parse_duration(duration)
    assert api.open_keys(iid) == ["resolve_first_line"]

    # first line: the known-error lookup finds nothing; functional escalation to the third line, naming a specialist
    api.step(iid, "resolve_first_line", "ken", ESCALATE_TO_THIRD_LINE, inbox=DESK, wrong=("laura", "ivan"),
             bad=({k: v for k, v in ESCALATE_TO_THIRD_LINE.items() if k != "escalationReason"},
                  ("$.escalationReason",)))
    work = api.task(iid, "resolve_second_line")
    assert api.inbox(work) == INCIDENT_MANAGERS | {"ivan"}  # the resolver group's role and the named specialist
    assert work["candidateUsers"] == ["ivan"]
    [functional] = api.instance(iid)["variables"]["escalations"]
    assert (functional["type"], functional["to"], functional["reason"]) == (
        "functional", "third-line", "additional_knowledge_needed")
    ok(api.claim(work["id"], "ivan"), 204)  # the specialist is working on it

    # the warning before the breach: the incident manager is raised, the resolution work stays as it is
    warning = fire_when_due(api, iid, "target_warning")
    assert api.open_keys(iid) == ["escalate_warning", "resolve_second_line"]
    assert api.task(iid, "resolve_second_line")["id"] == work["id"]
    assert api.task(iid, "resolve_second_line")["assignee"] == "ivan"
    assert "target_breached" in waiting_at(api, iid)  # the breach timer still runs
    for desk in DESK:  # the service desk (RACI informed) is told that the manager acts on the warning
        assert notified(api, desk, iid, "escalate_warning") == ["task_created"]
    acted = {"actionsTaken": ["added_specialists", "informed_user"], "userInformed": True,
             "notes": "Asked the token service vendor's on-call engineer to join.",
             "expectedResolution": "2030-01-31T12:00:00Z"}
    api.step(iid, "escalate_warning", "laura", acted, inbox=INCIDENT_MANAGERS, wrong=("judy", "ivan", "dave"),
             bad=({"notes": "x"}, ("$.actionsTaken",)))
    assert api.open_keys(iid) == ["resolve_second_line"]

    # the target is breached: hierarchic escalation to the level of policy escalation; the work still goes on
    breach = fire_when_due(api, iid, "target_breached")
    assert api.open_keys(iid) == ["escalate_breach", "resolve_second_line"]
    assert api.task(iid, "resolve_second_line")["id"] == work["id"]
    escalation = api.task(iid, "escalate_breach")
    # who gets the escalation: the incident managers act on it; the service owners (breach_escalation_to for
    # P1), the service level manager, the customer and the service desk are told at once
    assert api.inbox(escalation) == INCIDENT_MANAGERS
    for user in ROLES["service-owner"] | ROLES["service-level-manager"] | CUSTOMERS | DESK:
        assert notified(api, user, iid, "escalate_breach") == ["task_created"], user
    for user in ("ivan", "nina", "bob"):
        assert notified(api, user, iid, "escalate_breach") == [], user
    escalated = {"escalatedTo": "service-owner", "escalationReason": "target_missed_or_will_be_missed",
                 "customerInformed": True, "customerMessage": "Resolution will take two more hours.",
                 "actionsAgreed": ["Vendor engineer on site"], "revisedTarget": "2030-01-31T14:00:00Z"}
    api.step(iid, "escalate_breach", "mike", escalated, inbox=INCIDENT_MANAGERS, wrong=("dave", "ivan"),
             bad=({**escalated, "escalationReason": "bored"}, ("$.escalationReason",)))
    for owner in ROLES["service-owner"]:
        assert notified(api, owner, iid, "escalate_breach") == ["task_completed", "task_created"]

    # the specialist resolves; the user confirms; the service desk closes
    resolved = {"knownErrorChecked": True, "knownErrorMatch": "no_match", "actionsTaken": "Vendor patched the "
                "token service; sessions verified.", "resolutionResult": "resolved",
                "resolutionSummary": "Token service patched by the vendor.", "causeCode": "software_defect",
                "problemSuspected": False}
    api.step_assigned(iid, "resolve_second_line", "ivan", resolved, others=("laura",), wrong=("judy",))
    api.step(iid, "confirm", "tina", {"userConfirmation": "confirmed", "satisfaction": 3}, inbox=CUSTOMERS,
             wrong=("ivan", "judy"), bad=({"userConfirmation": "not_resolved"}, ("$.comment",)))
    api.step(iid, "close", "ken", {"closureCode": "resolved", "categoryCorrect": True, "recordComplete": True,
                                   "userInformedOfResolution": True, "problemSuspected": False},
             inbox=DESK, wrong=("tina",))
    instance = assert_closed(api, iid)
    assert len(instance["variables"]["escalations"]) == 1

    events = api.history(iid)
    assert completed_by(events) == [
        ("classify", "judy"), ("resolve_first_line", "ken"), ("escalate_warning", "laura"),
        ("escalate_breach", "mike"), ("resolve_second_line", "ivan"), ("confirm", "tina"), ("close", "ken")]
    [hierarchic] = completions(events, "escalate_breach")
    assert new(hierarchic, "escalatedTo") == "service-owner" and new(hierarchic, "customerInformed") is True
    # in order: the resolution work was created, the warning fired and was acted on, the breach fired and was
    # escalated, and only then was the same resolution task completed (non-interrupting: never cancelled)
    [created] = events_of(events, "task_created", "resolve_second_line")
    [done] = completions(events, "resolve_second_line")
    assert created["taskId"] == done["taskId"] == work["id"]
    assert not [e for e in events if e["taskId"] == work["id"] and e["type"] == "task_cancelled"]
    [warned] = events_of(events, "task_created", "escalate_warning")
    [raised] = events_of(events, "task_created", "escalate_breach")
    assert at(created) <= at(warning) <= at(warned) <= at(completions(events, "escalate_warning")[0]) \
        <= at(breach) <= at(raised) <= at(hierarchic) <= at(done)
    assert reached(events, "end_warning_handled") and reached(events, "end_breach_handled")
    assert reached(events, "end_closed") and thrown(events) == []


# -- 2. incident → major incident → problem → RFC → change successful → problem closed ------------------
def test_incident_major_incident_problem_rfc_change_successful_problem_closed(api):
    iid = api.start("incident", "judy", {**INCIDENT, "incidentRef": "INC-7002"}, "INC-7002")["id"]
    api.step(iid, "classify", "ken", MAJOR_CLASSIFY, inbox=DESK, wrong=("mike",))
    # the criteria of policy major_incident are met: major_incident started by message, the incident waits for it
    incident = api.instance(iid)
    assert incident["variables"]["major_criteria_matched"] == ["critical_service_down", "many_users"]
    assert waiting_at(api, iid) == ["catch_major_resolved"] and api.open_tasks(iid) == []
    [major] = instances(api, "major_incident")
    mid = major["id"]
    assert (major["variables"]["incidentRef"], major["variables"]["majorIncidentRef"]) == ("INC-7002", "MI-INC-7002")
    assert major["variables"]["criteriaMatched"] == ["critical_service_down", "many_users"]
    assert incident["variables"]["majorIncidentRef"] == "MI-INC-7002"  # linked both ways from the declaration
    assert thrown(api.history(iid)) == ["major_incident_declared"]

    api.step(mid, "take_charge", "mike", TAKE_CHARGE, inbox=MIMS, wrong=("laura", "judy"),
             bad=({**TAKE_CHARGE, "workstreams": "all of them"}, ("$.workstreams",)))
    assert api.open_keys(mid) == ["lead_and_communicate", "technical_recovery"]  # parallel workstreams
    api.step(mid, "technical_recovery", "laura", RECOVERED, inbox=INCIDENT_MANAGERS, wrong=("uma", "judy"))
    assert api.instance(iid)["state"] == "active"  # not before the manager confirms restoration
    api.step_assigned(mid, "lead_and_communicate", "mike", RESTORED, others=("uma",), wrong=("laura",))
    # the resolution went back to the incident (correlated by incidentRef), which closed with the major incident
    incident = assert_closed(api, iid)
    assert incident["variables"]["closureCode"] == "resolved_by_major_incident"
    assert incident["variables"]["majorIncidentRef"] == "MI-INC-7002"
    assert incident["variables"]["resolutionSummary"] == RECOVERED["restorationSummary"]

    # the review of how it was managed: not by its manager (SoD), after the required consultations
    review = api.task(mid, "review")
    assert "major-incident-review-independent" in problem(api.claim(review["id"], "mike"), 403)["detail"]
    api.refused(review["id"], "uma")  # a major incident manager, but the review is the incident manager's
    consult_then_complete(api, mid, "review", "laura", REVIEW,
                          {"major-incident-manager": "mike", "service-level-manager": "rachel"},
                          inbox=INCIDENT_MANAGERS)
    assert_closed(api, mid)
    major_events = api.history(mid)
    assert completed_by(major_events) == [("take_charge", "mike"), ("technical_recovery", "laura"),
                                          ("lead_and_communicate", "mike"), ("review", "laura")]
    assert thrown(major_events) == ["major_incident_resolved", "problem_raised", "major_incident_report"]
    assert [(e["actor"], e["activityId"]) for e in major_events if e["type"] == "consultation_recorded"] == [
        ("mike", "review"), ("rachel", "review")]

    # the problem record raised by the major incident
    [prob] = instances(api, "problem")
    pid = prob["id"]
    assert prob["variables"]["problemRef"] == "PRB-MI-INC-7002"
    assert prob["variables"]["linkedIncidents"] == ["INC-7002"]
    assert prob["variables"]["majorIncidentRef"] == "MI-INC-7002" and prob["variables"]["problem_priority"] == "high"
    investigated = {"impactTechnical": "Token service leaks sessions.", "impactBusiness": "Payroll down 40 minutes.",
                    "rcaTechnique": "five_whys", "investigationNotes": "The session cache never expires.",
                    "recentChangesReviewed": True, "rootCauseFound": True, "rootCause": "Session cache without expiry",
                    "workaroundFound": True, "workaround": "Restart the token service."}
    api.step(pid, "investigate", "nina", investigated, inbox=PROBLEM_MANAGERS, wrong=("laura", "bob"),
             bad=({**investigated, "rootCause": None}, ("$.rootCause",)))
    api.step(pid, "record_known_error", "nina", {
        "knownErrorRef": "KE-7002", "rootCause": "Session cache without expiry",
        "workaround": {"description": "Restart the token service."}, "workaroundPublished": True,
        "affectedServices": ["payroll"]}, inbox=PROBLEM_MANAGERS, wrong=("judy",))
    api.step(pid, "decide_fix", "nina", {"fixDecision": "raise_rfc", "rfc": RFC}, inbox=PROBLEM_MANAGERS,
             wrong=("bob",), bad=({"fixDecision": "raise_rfc"}, ("$.rfc",)))

    # control passes to change management: a change_normal instance carries the problem reference
    [change] = instances(api, "change_normal")
    cid = change["id"]
    assert change["variables"]["problemRef"] == "PRB-MI-INC-7002"
    assert change["variables"]["linkedRecords"] == {"problems": ["PRB-MI-INC-7002"], "knownErrors": ["KE-7002"],
                                                    "incidents": ["INC-7002"]}
    assert change["variables"]["summary"] == RFC["summary"]
    assert waiting_at(api, pid) == ["gw_wait_change"] and api.open_tasks(pid) == []  # the problem waits

    api.step(cid, "classify", "bob", SIGNIFICANT, inbox=ROLES["change-manager"], wrong=("nina",))
    api.step(cid, "assess", "bob", assessment("medium"), inbox=ROLES["change-manager"], consulted_by="erin")
    assert api.open_keys(cid) == ["authorise"]
    api.step(cid, "authorise", "carol", {"decision": "approved"}, inbox=ROLES["change-authority"],
             wrong=("nina", "bob"))
    api.step(cid, "schedule", "bob", WINDOW, inbox=ROLES["change-manager"])
    build_test_deploy(api, cid, builder="heidi", tester="grace", implementer="priya")
    api.step(cid, "pir", "bob", {"reviewOutcome": "objectives_met", "lessonsLearned": "Set cache expiries by default.",
                                 "documentationComplete": True}, inbox=ROLES["change-manager"])
    assert_closed(api, cid)
    change_events = api.history(cid)
    assert thrown(change_events) == ["configuration_update", "change_outcome"]
    assert [new(e, "outcome") for e in completions(change_events, "deploy")] == ["successful"]

    # the outcome reached the problem (correlated by problemRef); it closes only once the fix is confirmed
    [outcome] = [e["data"]["variables"] for e in api.history(pid)
                 if e["type"] == "message_received" and e["data"]["name"] == "change_outcome"]
    assert (outcome["problemRef"], outcome["changeOutcome"]) == ("PRB-MI-INC-7002", "successful")
    assert api.open_keys(pid) == ["verify_fix"]
    api.step(pid, "verify_fix", "nina", {"fixEffective": True, "recurrencesSinceFix": 0,
                                         "reviewOutcome": "root_cause_removed", "knownErrorClosed": True,
                                         "lessonsLearned": "Review cache settings in design."},
             inbox=PROBLEM_MANAGERS, wrong=("bob", "judy"))
    closed = assert_closed(api, pid)
    assert closed["variables"]["changeOutcome"] == "successful"
    problem_events = api.history(pid)
    assert completed_by(problem_events) == [("investigate", "nina"), ("record_known_error", "nina"),
                                            ("decide_fix", "nina"), ("verify_fix", "nina")]
    assert [new(e, "fixDecision") for e in completions(problem_events, "decide_fix")] == ["raise_rfc"]
    assert thrown(problem_events) == ["rfc_raised"] and reached(problem_events, "end_closed")
    [raised, verified] = [completions(problem_events, k)[0] for k in ("decide_fix", "verify_fix")]
    assert at(raised) < at(completions(change_events, "deploy")[0]) < at(verified)


# -- 3. service request → pre-approved change -----------------------------------------------------------
PATCH_REQUEST = {"requestRef": "REQ-7003", "requestType": "pre_approved_change", "summary": "Patch srv-web-01",
                 "description": "Apply the March security patch.", "service": "web shop",
                 "changeModel": "std-os-security-patch", "affectedCis": [{"ciId": "srv-web-01", "ciType": "server"}],
                 "risk": "low"}


def test_service_request_spawns_a_preapproved_change(api):
    invalid(api.c.post("/api/process-definitions/key/service_request/start", headers=H("tina"),
                       json={"variables": {k: v for k, v in PATCH_REQUEST.items() if k != "changeModel"}}),
            "$.changeModel")
    rid = api.start("service_request", "tina", PATCH_REQUEST, "REQ-7003")["id"]
    assert api.instance(rid)["variables"]["preapproved_match"] is True
    # the request started a pre-approved change by message, linked back to the request
    [change] = instances(api, "change_preapproved")
    cid = change["id"]
    assert change["businessKey"] == "REQ-7003" and change["variables"]["requestRef"] == "REQ-7003"
    assert (change["variables"]["model"], change["variables"]["model_matched"]) == ("std-os-security-patch", True)
    assert change["variables"]["affectedCis"] == PATCH_REQUEST["affectedCis"]
    [received] = [e for e in api.history(cid) if e["type"] == "message_received"]
    assert received["data"]["name"] == "preapproved_change_requested"
    assert received["data"]["variables"]["requestRef"] == "REQ-7003"
    assert thrown(api.history(rid)) == ["preapproved_change_requested"]

    # no assessment or authorisation: an implementer carries the model out
    assert api.open_keys(cid) == ["implement"]
    api.step(cid, "implement", "priya", {"outcome": "successful", "implementationNotes": "Patched per WI-PAT-002.",
                                         "successChecks": ["Server back in service", "Patch level recorded"]},
             inbox=IMPLEMENTERS, wrong=("tina", "judy"))
    assert_closed(api, cid)

    # the service desk fulfils the request with the change's reference, the requester confirms
    fulfil = api.task(rid, "fulfil")
    assert fulfil["due"] is not None  # fulfilment target of policy incident_targets
    api.step(rid, "fulfil", "judy", {"fulfilmentResult": "fulfilled", "fulfilmentNotes": "Patched.",
                                     "changeReference": change["businessKey"], "changeOutcome": "successful"},
             inbox=DESK, wrong=("tina", "priya"))
    api.step(rid, "confirm", "tina", {"userConfirmation": "confirmed", "satisfaction": 5}, inbox=CUSTOMERS,
             wrong=("judy",))
    request = assert_closed(api, rid)
    assert request["variables"]["closureCode"] == "fulfilled_confirmed"
    events = api.history(rid)
    assert events[0]["actor"] == "tina"
    assert completed_by(events) == [("fulfil", "judy"), ("confirm", "tina")]
    [fulfilled] = completions(events, "fulfil")
    assert new(fulfilled, "changeReference") == "REQ-7003" and new(fulfilled, "changeOutcome") == "successful"
    assert at(fulfilled) > at(completions(api.history(cid), "implement")[0])

    # a request naming a suspended model starts no change: it is refused with the reason and goes to the desk
    suspended = {**PATCH_REQUEST, "requestRef": "REQ-7004", "changeModel": "std-filesystem-extension"}
    other = api.start("service_request", "tina", suspended, "REQ-7004")["id"]
    variables = api.instance(other)["variables"]
    assert variables["preapproved_match"] is False and "suspended" in variables["preapproved_refusal"]
    assert len(instances(api, "change_preapproved")) == 1 and thrown(api.history(other)) == []
    assert api.open_keys(other) == ["fulfil"]


# -- 4. handover of the major incident manager role -----------------------------------------------------
def test_major_incident_manager_handover_is_recorded_in_history(fast):
    api = fast
    # declared by an incident manager through the messages API (criteria met outside an incident record)
    declared = ok(api.c.post("/api/messages", headers=H("laura"), json={
        "messageName": "major_incident_declared", "businessKey": "MI-7004",
        "variables": {"majorIncidentRef": "MI-7004", "summary": "Data centre network core down", "priority": "P1",
                      "criteriaMatched": ["critical_service_down"]}}))
    [mid] = declared["started"]
    major = api.instance(mid)
    assert major["businessKey"] == "MI-7004" and major["variables"]["status_update_cycle"] == "R/PT1S"
    api.step(mid, "take_charge", "mike", TAKE_CHARGE, inbox=MIMS, wrong=("laura",))
    assert api.task(mid, "lead_and_communicate")["assignee"] == "mike"

    # the communication cadence: a status update for the manager each interval
    fire_when_due(api, mid, "status_update_due")
    update = {"audience": ["customer", "top_management"], "channel": "bridge_call",
              "message": "Core switch stack failed; vendor engaged; next update in 30 minutes."}
    api.step_assigned(mid, "status_update", "mike", update, others=("uma",), wrong=("laura", "tina"),
                      bad=({**update, "channel": "smoke_signals"}, ("$.channel",)))

    # the manager's shift ends: the role is handed over to uma
    handover = {"coordinationAction": "hand_over", "newManager": "uma",
                "handoverNotes": "Vendor bridge open; failover plan agreed; next update 11:00.",
                "handoverCommunicatedTo": ["managers", "staff", "customer"]}
    api.step_assigned(mid, "lead_and_communicate", "mike", handover, others=("uma",), wrong=("laura",),
                      bad=({"coordinationAction": "hand_over", "newManager": "uma"},
                           ("$.handoverNotes", "$.handoverCommunicatedTo")))
    assert api.instance(mid)["variables"]["majorIncidentManager"] == "uma"
    # from now on the role is uma's: the coordination and the next status update are hers, not mike's
    assert api.task(mid, "lead_and_communicate")["assignee"] == "uma"
    fire_when_due(api, mid, "status_update_due")
    api.step_assigned(mid, "status_update", "uma", {**update, "message": "Uma now leads; failover at 11:00."},
                      others=("mike",))
    api.step(mid, "technical_recovery", "laura", RECOVERED, inbox=INCIDENT_MANAGERS, wrong=("uma",))
    api.step_assigned(mid, "lead_and_communicate", "uma", RESTORED, others=("mike",), wrong=("judy",))
    # neither manager of this major incident reviews it
    review = api.task(mid, "review")
    assert "major-incident-review-independent" in problem(api.claim(review["id"], "mike"), 403)["detail"]
    consult_then_complete(api, mid, "review", "laura", REVIEW,
                          {"major-incident-manager": "uma", "service-level-manager": "rachel"},
                          inbox=INCIDENT_MANAGERS)
    major = assert_closed(api, mid)
    assert major["variables"]["majorIncidentManager"] == "uma"

    events = api.history(mid)
    assert completed_by(events) == [
        ("take_charge", "mike"), ("status_update", "mike"), ("lead_and_communicate", "mike"),
        ("status_update", "uma"), ("technical_recovery", "laura"), ("lead_and_communicate", "uma"),
        ("review", "laura")]
    # who handed over to whom, when: mike's completion of the coordination with the handover ...
    handed, restored = completions(events, "lead_and_communicate")
    assert handed["actor"] == "mike" and new(handed, "coordinationAction") == "hand_over"
    assert new(handed, "newManager") == "uma" and new(handed, "handoverNotes") == handover["handoverNotes"]
    assert restored["actor"] == "uma" and new(restored, "coordinationAction") == "service_restored"
    # ... the record of the handover on the major incident (manager history) ...
    [recorded] = events_of(events, "activity_completed", "record_handover")
    changes = recorded["data"]["changes"]
    assert changes["majorIncidentManager"] == {"old": "mike", "new": "uma"}
    [entry] = changes["managerHistory"]["new"]
    assert (entry["from"], entry["to"], entry["notes"]) == ("mike", "uma", handover["handoverNotes"])
    assert entry["communicatedTo"] == ["managers", "staff", "customer"]
    assert at(handed) <= datetime.fromisoformat(entry["at"]) <= at(recorded)
    # ... and the coordination task re-created for the new manager
    assert [e["data"]["assignee"] for e in events_of(events, "task_created", "lead_and_communicate")] == [
        "mike", "uma"]
    assert [e["actor"] for e in completions(events, "status_update")] == ["mike", "uma"]
    cadence = events_of(events, "timer_fired", "status_update_due")
    assert len(cadence) == 2 and at(cadence[0]) < at(handed) < at(cadence[1])
    assert major["variables"]["managerHistory"] == [entry]
    # the customer (RACI informed on the coordination) heard of the handover and of the restoration
    assert notified(api, "tina", mid, "lead_and_communicate").count("task_completed") == 2
    assert thrown(events) == ["problem_raised", "major_incident_report"]  # no incident record to tell
    [prob] = instances(api, "problem")
    assert prob["variables"]["problemRef"] == "PRB-MI-7004" and prob["variables"]["linkedIncidents"] == []
