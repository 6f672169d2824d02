"""The interfaces between the processes of the ISO/IEC 20000 pack (docs/interfaces.md), on the engine's
service layer with the whole pack applied for the example organisation: RACI candidates, segregation of
duties, required consultations, forms and policies are all enforced, and messages travel between
instances the way they do in production (outbox, correlation properties, message start events, buffer).

- incident → major incident → problem → RFC (``rfc_raised``) → change_normal → ``change_outcome`` → the
  problem verifies the fix and closes;
- service request → ``preapproved_change_requested`` → change_preapproved;
- release ↔ change: ``release_rfc_requested`` starts the governing change, ``release_change_approved``
  lets the release proceed, ``release_outcome`` of a backed-out deployment reaches the change's review.
"""

from __future__ import annotations

import json

import pytest
import yaml
from sqlalchemy import text

from itsmflow.engine.core import Engine
from itsmflow.engine.directory import Directory
from itsmflow.settings import REPO_ROOT

from .test_pack_incident_content import INCIDENT, MAJOR_CLASSIFY
from .test_pack_release_content import (
    A1_OK, A2_OK, A3_OK, AGREED, BASELINE_BEFORE, BUILT, DEFINITION, LIVE_ACCEPT_OK, PLAN, PRE_OK, TEST_OK,
)

PACK = REPO_ROOT / "process_packs" / "iso20000"
ORG = PACK / "orgs" / "example"


@pytest.fixture
def iso(settings):
    """An engine with the shipped pack applied for the example organisation (its users and roles)."""
    engine = Engine(settings, Directory.load(ORG / "directory.yaml"))
    engine.packs.apply(PACK, ORG)
    yield engine
    engine.close()


# -- helpers ------------------------------------------------------------------------------------------
def principal(engine, user):
    return engine.directory.get(user).principal()


def instances(engine, key):
    return engine.runtime.list(definition_key=key)[0]


def open_keys(engine, iid):
    return sorted(t.task_definition_key for t in engine.tasks.query(process_instance_id=iid)[0])


def the_task(engine, iid, key):
    found = [t for t in engine.tasks.query(process_instance_id=iid)[0] if t.task_definition_key == key]
    assert len(found) == 1, f"expected task {key}, open: {open_keys(engine, iid)}"
    return found[0]


def work(engine, iid, key, user, data, path=None):
    """``user`` claims and completes the open task ``key``; the consulted roles the RACI requires give their
    opinion first (a holder of the role other than ``user``)."""
    task = the_task(engine, iid, key)
    me = engine.directory.get(user)
    assert task.assignee == user or me.roles & set(task.candidate_roles), (key, user, task.candidate_roles)
    entry = engine.packs.rules(task.definition_id).raci.get(key)
    for role in (entry.required_consultations if entry else []):
        holder = sorted(u.id for u in engine.directory.users_with_role(role) if u.id != user)[0]
        engine.consultations.record(task.id, principal(engine, holder), f"{holder}: no objection", role)
    if task.assignee is None:
        engine.tasks.claim(task.id, principal(engine, user))
    engine.tasks.complete(task.id, principal(engine, user), data)
    if path is not None:
        path.append(key)
    return task


def received(engine, iid, name):
    """Variables of the messages ``name`` the instance received (its audit trail)."""
    out = []
    for e in engine.history.events(iid):
        if e.type == "message_received" and e.data.get("name") == name:
            out.append(e.data["variables"])
    return out


def thrown(engine, iid):
    return [e.data.get("name") for e in engine.history.events(iid) if e.type == "message_thrown"]


def buffered(engine, name):
    with engine.db.connect() as conn:
        rows = conn.execute(text("SELECT correlation_json, variables_json FROM buffered_message "
                                 "WHERE message_name = :n"), {"n": name}).all()
    return [(json.loads(r[0]) if r[0] else None, json.loads(r[1])) for r in rows]


CLASSIFY = {"category": "significant", "risk": "medium", "priority": "high", "businessImpact": "medium"}
ASSESS = {"risk": "medium", "assessmentSummary": "Rolling change, one member at a time.",
          "serviceImpact": "Loss of redundancy while each member restarts.", "technicalFeasibility": "feasible",
          "securityControlsBypassed": False, "backOutPlanAdequate": True}
WINDOW = {"plannedStart": "2030-03-09T20:00:00Z", "plannedEnd": "2030-03-09T23:00:00Z"}
PASSED = {"testResult": "passed", "testEvidence": "Staging run TP-9.", "builtToSpecification": True,
          "verifiableDuringDeployment": True, "backOutTested": True}


def cab(engine, cid, votes, path=None):
    """CAB members vote, one open ``cab_decision`` task each, until the completion rule decides."""
    for user, vote in votes:
        task = [t for t in engine.tasks.query(process_instance_id=cid)[0] if t.task_definition_key == "cab_decision"][0]
        engine.tasks.claim(task.id, principal(engine, user))
        engine.tasks.complete(task.id, principal(engine, user), vote)
    assert "cab_decision" not in open_keys(engine, cid)
    if path is not None:
        path.append("cab_decision")


def authorise(engine, cid, path):
    """The authority the change_authority policy asks for approves (never the initiator)."""
    keys = {k for k in open_keys(engine, cid) if k in ("authorise_manager", "authorise", "cab_decision")}
    [key] = keys
    if key == "cab_decision":
        cab(engine, cid, [("carol", {"decision": "approved"}), ("dave", {"decision": "approved"})], path)
    else:
        work(engine, cid, key, "bob" if key == "authorise_manager" else "carol", {"decision": "approved"}, path)


# -- incident → major incident → problem → change → problem closed ---------------------------------------
def test_major_incident_problem_fix_goes_through_a_normal_change_and_the_problem_closes(iso):
    engine, path = iso, []
    iid = engine.runtime.start("incident", business_key="INC-40", principal=principal(engine, "judy"),
                               variables={**INCIDENT, "incidentRef": "INC-40"}).id
    work(engine, iid, "classify", "judy", MAJOR_CLASSIFY)
    [major] = instances(engine, "major_incident")
    mid = major.id
    work(engine, mid, "take_charge", "mike", {
        "majorIncidentManager": "mike", "impactStatement": "Nobody can sign in to payroll on pay day.",
        "servicesAffected": ["payroll"], "workstreams": [{"team": "identity", "lead": "laura"}],
        "notificationsSent": True})
    work(engine, mid, "technical_recovery", "laura", {"restorationSummary": "Token service restarted.",
                                                       "restoredAt": "2030-01-31T10:40:00Z"})
    work(engine, mid, "lead_and_communicate", "mike", {
        "coordinationAction": "service_restored", "customerConfirmedRestoration": True,
        "finalCommunication": "Payroll is available again; root cause follows."})
    assert engine.runtime.get(iid).state == "completed"
    work(engine, mid, "review", "laura", {"reviewOutcome": "improvements_needed",
                                          "lessonsLearned": "Open the vendor bridge at declaration.",
                                          "reviewChair": "Laura"})
    assert engine.runtime.get(mid).state == "completed"
    [problem] = instances(engine, "problem")
    pid = problem.id
    assert problem.variables["problemRef"] == "PRB-MI-INC-40"
    work(engine, pid, "investigate", "nina", {
        "impactTechnical": "Token service leaks sessions.", "impactBusiness": "Payroll unavailable 40 minutes.",
        "rcaTechnique": "five_whys", "investigationNotes": "Session cache never expires.",
        "recentChangesReviewed": True, "rootCauseFound": True, "rootCause": "Session cache without expiry",
        "workaroundFound": True, "workaround": "Restart the token service."}, path)
    work(engine, pid, "record_known_error", "nina", {
        "knownErrorRef": "KE-40", "rootCause": "Session cache without expiry",
        "workaround": {"description": "Restart the token service."}, "workaroundPublished": True,
        "affectedServices": ["payroll"]}, path)
    rfc = {"summary": "Expire token sessions after 8 hours", "description": "Configure the cache expiry.",
           "purpose": "Removes the root cause of MI-INC-40.", "affectedServices": ["payroll"],
           "affectedCis": [{"ciId": "token-svc", "ciType": "application"}], "impactedCustomers": ["Finance"],
           "requestedPriority": "high", "initialRisk": "medium", "impactDescription": "One restart.",
           "estimatedCost": 2000, "backOutPlan": {"approach": "reverse", "steps": "Remove the expiry setting."}}
    work(engine, pid, "decide_fix", "nina", {"fixDecision": "raise_rfc", "rfc": rfc}, path)

    # rfc_raised started a normal change, carrying the problem reference (message start start_problem_rfc)
    [change] = instances(engine, "change_normal")
    cid = change.id
    assert change.variables["problemRef"] == "PRB-MI-INC-40"
    assert change.variables["changeRef"] == "RFC-PRB-MI-INC-40"
    assert change.variables["releaseRef"] is None
    assert change.variables["linkedRecords"] == {"problems": ["PRB-MI-INC-40"], "knownErrors": ["KE-40"],
                                                 "incidents": ["INC-40"]}
    assert change.variables["summary"] == rfc["summary"] and "policies" in change.variables
    assert [a["activityId"] for a in engine.runtime.get(pid).active_activities] == ["gw_wait_change"]
    assert buffered(engine, "rfc_raised") == []

    # the change goes its normal way, with the pack's rules
    work(engine, cid, "classify", "bob", CLASSIFY, path)
    work(engine, cid, "assess", "bob", ASSESS, path)  # the configuration manager is consulted first
    authorise(engine, cid, path)
    work(engine, cid, "schedule", "bob", WINDOW, path)
    work(engine, cid, "build", "frank", {"buildResult": "built", "buildSummary": "Expiry configured."}, path)
    work(engine, cid, "test", "grace", PASSED, path)  # not the builder (SoD builder-not-tester)
    work(engine, cid, "confirm_window", "heidi", {"windowDecision": "proceed"}, path)
    work(engine, cid, "deploy", "heidi", {"outcome": "successful", "implementationNotes": "Expiry active."}, path)
    assert open_keys(engine, cid) == ["pir"]  # no release to wait for; significant changes get a full PIR
    work(engine, cid, "pir", "bob", {"reviewOutcome": "objectives_met", "lessonsLearned": "Set expiries by default.",
                                     "documentationComplete": True}, path)
    change = engine.runtime.get(cid)
    assert change.state == "completed", change.incidents
    assert thrown(engine, cid) == ["configuration_update", "change_outcome"]

    # the problem received the change outcome (correlated by problemRef) and waits for the fix to be verified
    assert received(engine, pid, "change_outcome") == [{
        "problemRef": "PRB-MI-INC-40", "changeRef": "RFC-PRB-MI-INC-40", "changeOutcome": "successful",
        "changeReviewOutcome": "objectives_met"}]
    assert open_keys(engine, pid) == ["verify_fix"]
    work(engine, pid, "verify_fix", "nina", {"fixEffective": True, "recurrencesSinceFix": 0,
                                             "reviewOutcome": "root_cause_removed",
                                             "lessonsLearned": "Review cache settings in design."}, path)
    problem = engine.runtime.get(pid)
    assert problem.state == "completed", problem.incidents
    assert [a["activityId"] for a in problem.active_activities] == []
    assert problem.variables["changeRef"] == "RFC-PRB-MI-INC-40"
    assert path == ["investigate", "record_known_error", "decide_fix", "classify", "assess",
                    path[5], "schedule", "build", "test", "confirm_window", "deploy", "pir", "verify_fix"]
    assert buffered(engine, "change_outcome") == []


def test_a_withdrawn_change_tells_its_problem(iso):
    """A rejected RFC that its initiator withdraws reports changeOutcome withdrawn: the problem goes back to the
    fix decision."""
    engine = iso
    pid = engine.messages.correlate("problem_raised", variables={
        "problemSource": "proactive", "problemRef": "PRB-41", "summary": "Reports time out",
        "linkedIncidents": ["INC-41"]}).started[0]
    work(engine, pid, "investigate", "nina", {
        "impactTechnical": "Report queries time out.", "impactBusiness": "Month-end delayed.",
        "rcaTechnique": "five_whys", "investigationNotes": "Missing index.", "rootCauseFound": True,
        "rootCause": "Missing index", "workaroundFound": False})
    work(engine, pid, "record_known_error", "nina", {"knownErrorRef": "KE-41", "rootCause": "Missing index",
                                                     "workaroundPublished": False, "affectedServices": ["reports"]})
    rfc = {"summary": "Add the index", "description": "Create the index online.", "purpose": "Fix KE-41.",
           "affectedServices": ["reports"], "affectedCis": [{"ciId": "report-db"}], "impactedCustomers": ["Finance"],
           "requestedPriority": "low", "initialRisk": "low", "impactDescription": "None.", "estimatedCost": 100,
           "backOutPlan": {"approach": "reverse", "steps": "Drop the index."}}
    work(engine, pid, "decide_fix", "nina", {"fixDecision": "raise_rfc", "rfc": rfc})
    [change] = instances(engine, "change_normal")
    cid = change.id
    work(engine, cid, "classify", "bob", {"category": "minor", "risk": "low", "priority": "low",
                                          "businessImpact": "low"})
    work(engine, cid, "assess", "bob", {**ASSESS, "risk": "low"})
    [key] = [k for k in open_keys(engine, cid) if k in ("authorise_manager", "authorise")]
    decider = {"authorise_manager": "bob", "authorise": "carol"}[key]
    work(engine, cid, key, decider, {"decision": "rejected", "reason": "Index would lock the table."})
    work(engine, cid, "revise", "alice", {"revisionAction": "withdraw", "withdrawalReason": "Another way found."})
    assert engine.runtime.get(cid).state == "completed"
    assert received(engine, pid, "change_outcome") == [{
        "problemRef": "PRB-41", "changeRef": "RFC-PRB-41", "changeOutcome": "withdrawn",
        "changeDecision": "rejected", "rejectionReason": "Index would lock the table."}]
    assert open_keys(engine, pid) == ["decide_fix"]


# -- service request → pre-approved change -----------------------------------------------------------------
def test_service_request_starts_a_preapproved_change(iso):
    engine = iso
    request = {"requestRef": "REQ-40", "requestType": "pre_approved_change", "summary": "Patch srv-web-01",
               "description": "Apply the March security patch.", "service": "web shop",
               "changeModel": "std-os-security-patch", "affectedCis": [{"ciId": "srv-web-01", "ciType": "server"}],
               "risk": "low"}
    rid = engine.runtime.start("service_request", business_key="REQ-40", principal=principal(engine, "tina"),
                               variables=request).id
    [change] = instances(engine, "change_preapproved")
    assert change.variables["requestRef"] == "REQ-40" and change.business_key == "REQ-40"
    assert change.variables["model"] == "std-os-security-patch" and change.variables["model_matched"] is True
    assert "policies" in change.variables
    assert [a["activityId"] for a in change.active_activities] == ["implement"]
    assert buffered(engine, "preapproved_change_requested") == []
    assert open_keys(engine, rid) == ["fulfil"]
    work(engine, change.id, "implement", "heidi", {"outcome": "successful", "implementationNotes": "Patched."})
    assert engine.runtime.get(change.id).state == "completed"
    work(engine, rid, "fulfil", "judy", {"fulfilmentResult": "fulfilled", "fulfilmentNotes": "Patched.",
                                         "changeReference": "REQ-40", "changeOutcome": "successful"})
    assert open_keys(engine, rid) == ["confirm"]


# -- release ↔ change ------------------------------------------------------------------------------------
IT_RELEASE = {**DEFINITION, "releaseRef": "REL-2030-040", "releaseType": "minor", "ciType": "it_service"}


def test_release_is_governed_by_a_change_that_records_the_backed_out_deployment(iso):
    engine, path = iso, []
    rel = engine.runtime.start("release_deployment", business_key="REL-2030-040",
                               principal=principal(engine, "oscar"), variables=IT_RELEASE).id
    # the release asked for its RFC (release_rfc_requested) and waits for the change's decision
    assert [a["activityId"] for a in engine.runtime.get(rel).active_activities] == ["catch_change_approved"]
    [change] = instances(engine, "change_normal")
    cid = change.id
    v = change.variables
    assert (v["releaseRef"], v["problemRef"], v["changeRef"]) == ("REL-2030-040", None, "RFC-REL-2030-040")
    assert v["linkedRecords"] == {"release": "REL-2030-040"}
    assert v["estimatedCost"] is None  # the release gives no estimate: the strictest authority decides
    assert v["summary"] == DEFINITION["summary"] and v["affectedServices"] == DEFINITION["affectedServices"]
    assert buffered(engine, "release_rfc_requested") == []

    work(engine, cid, "classify", "bob", CLASSIFY, path)
    work(engine, cid, "assess", "bob", ASSESS, path)
    assert engine.runtime.get(cid).variables["required_authority"] == "cab"
    authorise(engine, cid, path)
    # the approval reached the release (correlated by releaseRef), which goes on to planning
    assert received(engine, rel, "release_change_approved") == [
        {"releaseRef": "REL-2030-040", "changeDecision": "approved", "changeRef": "RFC-REL-2030-040"}]
    assert open_keys(engine, rel) == ["plan_release"]
    assert engine.runtime.get(rel).variables["changeRef"] == "RFC-REL-2030-040"

    # the release is built, accepted stage by stage, and its live deployment fails and is backed out
    work(engine, rel, "plan_release", "oscar", PLAN)
    work(engine, rel, "agree_plan", "tina", AGREED)
    work(engine, rel, "build_release", "frank", BUILT)
    work(engine, rel, "accept_pre_acceptance", "oscar", A1_OK)
    work(engine, rel, "release_from_pre_acceptance", "heidi", PRE_OK)
    work(engine, rel, "accept_acceptance", "quentin", A2_OK)
    work(engine, rel, "acceptance_test", "grace", TEST_OK)
    work(engine, rel, "release_into_live", "priya", A3_OK)
    work(engine, rel, "accept_into_live", "rachel", LIVE_ACCEPT_OK)
    work(engine, rel, "baseline_before", "erin", BASELINE_BEFORE)
    work(engine, rel, "deploy_live", "priya", {"outcome": "unsuccessful", "deploymentLog": "Paris failed.",
                                               "targetsPlanned": 2, "targetsSucceeded": 1,
                                               "failureReason": "Schema migration timed out."})
    work(engine, rel, "backout", "priya", {
        "remediationAction": "reversed", "actionsTaken": "Redeployed 10.1, restored schema 41.", "followedPlan": True,
        "configurationRestored": True, "failureInvestigation": "Lock contention on the orders table.",
        "incidentsRaised": 2, "incidentReferences": ["INC-7", "INC-8"]})
    assert engine.runtime.get(rel).state == "completed"
    # the change is not waiting yet: the outcome is kept for it, under its correlation key
    [(corr, outcome)] = buffered(engine, "release_outcome")
    assert corr == {"releaseRef": "REL-2030-040"} and outcome["releaseStatus"] == "backed_out"

    # the change's own steps; the implementer records the failed deployment and its back-out
    work(engine, cid, "schedule", "bob", WINDOW, path)
    work(engine, cid, "build", "heidi", {"buildResult": "built", "buildSummary": "Release 10.2 staged."}, path)
    work(engine, cid, "test", "quentin", PASSED, path)
    work(engine, cid, "confirm_window", "ivan", {"windowDecision": "proceed"}, path)
    work(engine, cid, "deploy", "ivan", {"outcome": "unsuccessful", "implementationNotes": "Release backed out.",
                                         "failureReason": "Schema migration timed out."}, path)
    work(engine, cid, "backout", "ivan", {"remediationAction": "reversed", "actionsTaken": "Release 10.1 back.",
                                          "followedPlan": True, "configurationRestored": True}, path)
    # the buffered release outcome reached the change (correlated by releaseRef) before its review
    assert buffered(engine, "release_outcome") == []
    [got] = received(engine, cid, "release_outcome")
    assert (got["releaseRef"], got["releaseStatus"], got["outcome"], got["earlyLifeIncidents"]) == (
        "REL-2030-040", "backed_out", "unsuccessful", 2)
    assert any(e.type == "buffered_message_delivered" and e.activity_id == "catch_release_outcome"
               for e in engine.history.events(cid))
    assert open_keys(engine, cid) == ["pir"]
    pir = the_task(engine, cid, "pir")
    seen = engine.tasks.variables(pir.id)
    assert (seen["releaseStatus"], seen["failureInvestigation"]) == ("backed_out",
                                                                     "Lock contention on the orders table.")
    assert seen["pir_required"] is True
    assert engine.forms.task_form(pir.id)["data"]["incidentsSinceImplementation"] == 2  # pre-filled
    work(engine, cid, "pir", "bob", {"reviewOutcome": "not_met", "lessonsLearned": "Rehearse the migration.",
                                     "incidentsSinceImplementation": 2, "documentationComplete": True}, path)
    change = engine.runtime.get(cid)
    assert change.state == "completed", change.incidents
    assert change.variables["incidentsSinceImplementation"] == 2
    assert thrown(engine, cid) == ["release_change_approved"]  # nothing for a problem, no CMDB update
    assert path == ["classify", "assess", path[2], "schedule", "build", "test", "confirm_window", "deploy",
                    "backout", "pir"]


def test_a_withdrawn_release_change_stops_the_release(iso):
    engine = iso
    rel = engine.runtime.start("release_deployment", business_key="REL-2030-041",
                               principal=principal(engine, "oscar"),
                               variables={**IT_RELEASE, "releaseRef": "REL-2030-041"}).id
    [change] = instances(engine, "change_normal")
    cid = change.id
    work(engine, cid, "classify", "bob", CLASSIFY)
    work(engine, cid, "assess", "bob", ASSESS)
    cab(engine, cid, [("dave", {"decision": "rejected", "reason": "Clashes with the audit."}),
                      ("erin", {"decision": "rejected", "reason": "No staff that week."})])
    assert open_keys(engine, rel) == []  # a rejection goes back to the initiator first: the release still waits
    work(engine, cid, "revise", "sam", {"revisionAction": "withdraw", "withdrawalReason": "Next quarter."})
    assert engine.runtime.get(cid).state == "completed"
    release = engine.runtime.get(rel)
    assert release.state == "completed", release.incidents
    assert received(engine, rel, "release_change_approved") == [{
        "releaseRef": "REL-2030-041", "changeDecision": "rejected", "changeRef": "RFC-REL-2030-041",
        "reason": "dave: Clashes with the audit.; erin: No staff that week."}]
    assert thrown(engine, cid) == ["release_change_approved"]


def test_pack_declares_every_message_flow_between_its_processes():
    """pack.yaml `interfaces` lists exactly the message flows that exist between the pack's processes (a
    message one process throws and another catches), and the loader accepts them."""
    from itsmflow.engine.bpmn import parse_deployment
    from itsmflow.engine.sandbox import check_expression

    manifest = yaml.safe_load((PACK / "pack.yaml").read_text(encoding="utf-8"))
    files = [(p["bpmn"].rsplit("/", 1)[-1], (PACK / p["bpmn"]).read_bytes()) for p in manifest["processes"]]
    models = {k: v.as_dict() for k, v in parse_deployment(files, script_validator=check_expression).processes.items()}
    flows = {(m, a, b) for a in models for b in models if a != b
             for m in set(models[a]["messages_thrown"]) & set(models[b]["messages_caught"])}
    declared = {(i["message"], i["from"], i["to"]) for i in manifest["interfaces"]}
    assert declared == flows
    assert {("rfc_raised", "problem", "change_normal"), ("change_outcome", "change_normal", "problem"),
            ("preapproved_change_requested", "service_request", "change_preapproved"),
            ("release_rfc_requested", "release_deployment", "change_normal"),
            ("release_change_approved", "change_normal", "release_deployment"),
            ("release_outcome", "release_deployment", "change_normal")} <= declared
    # exactly one process starts from each message (the engine starts every definition that catches it)
    starts = {}
    for key, model in models.items():
        for name in model.get("start_messages") or []:
            starts.setdefault(name, []).append(key)
    assert {n: k for n, k in starts.items() if len(k) > 1} == {}
