"""Scenario tests of the ISO/IEC 20000 change-management pack (issue 6, "Must show"), over the HTTP API.

The app is the one ``itsmflow serve`` runs (``server.build_app``): the ISO 20000 pack applied with the example
organisation (``process_packs/iso20000/orgs/example/directory.yaml``, tokens ``demo-<user id>``). Every scenario
drives one lifecycle path of ``change_normal``, ``change_emergency`` or ``change_preapproved`` with the tokens
of different people, and at each human task asserts WHO could act:

- the task is in the inbox (``GET /api/tasks?candidateUser=u``) of exactly the users holding the role the RACI
  makes responsible, and of nobody else;
- a user without that role is refused (403) on claim and complete;
- a required consultation (configuration manager on ``assess``) blocks completion (409) until the opinion
  is recorded; forms refuse bad input (422 with ``errors[].path``);
- the audit trail (``GET /api/process-instances/{id}/history``) names who completed each task, with the
  decision, the reason of a rejection and timestamps, and its hash chain verifies (recomputed here from the
  HTTP answer, and by ``engine.history.verify``).

Every scenario runs for both shipped organisations (fixture ``iso`` is parametrised, docs/tailoring.md): the
example organisation (the pack as it is) and Northwind (orgs/northwind: its own people and role names, stricter
change authority, its own freeze windows, names, and a security review added before authorisation). A ``Cast``
maps the example organisation's people to Northwind's, so the scenarios read the same; where the tailoring
shows (the security review, the authority a change needs, the role names in messages) the tests assert it.

Element ids, form fields and role ids are those of docs/traceability-change.md. The schedule of changes
(``GET /api/schedule/changes``) is not served yet and is not tested here.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import text

from itsmflow.settings import REPO_ROOT, Settings
from itsmflow.demo import RFC as DEMO_RFC

ISO_PACK = REPO_ROOT / "process_packs" / "iso20000"
EXAMPLE_ORG = ISO_PACK / "orgs" / "example"
NORTHWIND_ORG = ISO_PACK / "orgs" / "northwind"
PROBLEM = "application/problem+json"
GENESIS = "0" * 64

# Who holds which role in the example organisation (orgs/example/directory.yaml); checked by the fixture.
ROLES = {
    "change-initiator": {"alice", "frank", "judy", "sam"},
    "change-manager": {"bob"},
    "change-authority": {"alice", "carol", "dave"},
    "cab-member": {"carol", "dave", "erin"},
    "change-builder": {"frank", "heidi"},
    "independent-tester": {"grace", "quentin"},
    "change-implementer": {"heidi", "ivan", "priya"},
    "configuration-manager": {"erin", "ivan"},
    "service-owner": {"dave", "sam"},
}
INITIATORS = ROLES["change-initiator"]
CAB_VOTES = yaml.safe_load((ISO_PACK / "policies" / "change_authority.yaml").read_text())["cab"]["votes"]
MANAGERS = ROLES["change-manager"]
AUTHORITIES = ROLES["change-authority"]
CAB = ROLES["cab-member"]
BUILDERS = ROLES["change-builder"]
TESTERS = ROLES["independent-tester"]
IMPLEMENTERS = ROLES["change-implementer"]
SERVICE_OWNERS = ROLES["service-owner"]


# -- the two organisations (docs/tailoring.md) ----------------------------------------------------------
class Cast:
    """Who plays whom in an organisation. The scenarios are written with the example organisation's people
    (alice, bob…) and the pack's role ids; ``users`` maps each of them to the organisation's person holding
    the same pack roles under the organisation's own role names (``roles``: pack role id → its name)."""

    def __init__(self, name: str, directory: Any, users: dict[str, str], roles: dict[str, str],
                 security_officers: set[str] = frozenset()) -> None:
        self.name, self.directory, self.users, self.roles = name, directory, users, roles
        self.people = {v: k for k, v in users.items()}
        self.security_officers = set(security_officers)  # Northwind's added step (security_review)

    def u(self, user: str) -> str:
        """The organisation's user id of the example organisation's ``user``."""
        return self.users.get(user, user)

    def back(self, user: str | None) -> str | None:
        """The example organisation's name of the organisation's ``user`` (its own when nobody maps to it)."""
        return self.people.get(user, user) if user is not None else None

    def role(self, pack_role: str) -> str:
        return self.roles.get(pack_role, pack_role)


NORTHWIND_ROLES = yaml.safe_load((NORTHWIND_ORG / "tailoring.yaml").read_text())["roles"]
CASTS = {
    "example": Cast("example", EXAMPLE_ORG, {}, {}),
    "northwind": Cast("northwind", NORTHWIND_ORG, {
        "admin": "sysadmin", "alice": "amara", "bob": "bruno", "carol": "chiara", "dave": "dmitri", "erin": "esme",
        "frank": "felix", "grace": "greta", "heidi": "hugo", "ivan": "ines", "judy": "jonas", "ken": "kai",
        "laura": "lena", "mike": "marek", "nina": "noor", "uma": "ulla", "oscar": "otto", "priya": "pia",
        "quentin": "quinn", "rachel": "rosa", "sam": "soren", "tina": "tomas"}, NORTHWIND_ROLES, {"sefa"}),
}
CAST = CASTS["example"]  # the organisation of the running test (set by the fixture)


# -- fixture: the app `itsmflow serve` runs, on the test database, for each organisation ----------------
@pytest.fixture(params=sorted(CASTS))
def iso(request, db_url, tmp_path):
    global CAST
    from itsmflow.server import build_app

    cast = CASTS[request.param]
    settings = Settings(db=db_url, data_dir=tmp_path, directory=cast.directory / "directory.yaml", default_pack=True,
                        host="127.0.0.1")
    app = build_app(settings)  # serve applies the tailoring of the directory's organisation
    engine = app.state.engine
    CAST = cast
    try:
        for role, users in ROLES.items():  # the same cast, in the organisation's people and role names
            holders = {cast.back(u.id) for u in engine.directory.users_with_role(cast.role(role))}
            assert holders == users, role
        with TestClient(app) as client:
            yield Api(client, engine, cast)
    finally:
        CAST = CASTS["example"]
        engine.close()


def H(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer demo-{CAST.u(user)}"}


def ok(resp, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


def problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def invalid(resp, *paths: str) -> dict:
    """A 422 form refusal that names (at least) these JSON paths."""
    body = problem(resp, 422)
    reported = {e["path"] for e in body["errors"]}
    assert set(paths) <= reported, (paths, body["errors"])
    return body


class Api:
    """The HTTP client plus the checks every scenario makes at every step."""

    def __init__(self, client: TestClient, engine, cast: Cast) -> None:
        self.c = client
        self.engine = engine
        self.cast = cast
        self.users = sorted(engine.directory.users)  # the organisation's user ids

    def u(self, user: str) -> str:
        return self.cast.u(user)

    def role(self, pack_role: str) -> str:
        return self.cast.role(pack_role)

    def policy(self, name: str) -> dict[str, Any]:
        """The organisation's values of a policy (the pack's merged with its tailoring), as instances get them."""
        rules = self.engine.packs.rules(self.engine.repository.latest("change_normal").id)
        return rules.policies[name]

    # -- instances and tasks --------------------------------------------------------------------------
    def start(self, key: str, user: str, variables: dict[str, Any], business_key: str) -> dict:
        return ok(self.c.post(f"/api/process-definitions/key/{key}/start", headers=H(user),
                              json={"businessKey": business_key, "variables": variables}), 201)

    def instance(self, iid: str) -> dict:
        return ok(self.c.get(f"/api/process-instances/{iid}", headers=H("admin")))

    def open_tasks(self, iid: str) -> list[dict]:
        return ok(self.c.get("/api/tasks", headers=H("admin"), params={"processInstanceId": iid}))

    def open_keys(self, iid: str) -> list[str]:
        return sorted(t["taskDefinitionKey"] for t in self.open_tasks(iid))

    def task(self, iid: str, key: str) -> dict:
        found = [t for t in self.open_tasks(iid) if t["taskDefinitionKey"] == key]
        assert len(found) == 1, (key, self.open_keys(iid))
        return found[0]

    def inbox(self, task: dict) -> set[str]:
        """Everybody whose own inbox (queried with their own token) holds the task."""
        holders = set()
        for user in self.users:
            mine = ok(self.c.get("/api/tasks", headers={"Authorization": f"Bearer demo-{user}"}, params={
                "candidateUser": user, "processInstanceId": task["processInstanceId"]}))
            if task["id"] in [t["id"] for t in mine]:
                holders.add(self.cast.back(user))
        return holders

    def claim(self, task_id: str, user: str):
        return self.c.post(f"/api/tasks/{task_id}/claim", headers=H(user))

    def complete(self, task_id: str, user: str, variables: dict[str, Any]):
        return self.c.post(f"/api/tasks/{task_id}/complete", headers=H(user), json={"variables": variables})

    def consult(self, task_id: str, user: str, opinion: str):
        return self.c.post(f"/api/tasks/{task_id}/consultations", headers=H(user), json={"opinion": opinion})

    def form(self, task_id: str, user: str = "admin") -> dict:
        return ok(self.c.get(f"/api/tasks/{task_id}/form", headers=H(user)))

    def refused(self, task_id: str, user: str, variables: dict[str, Any] | None = None) -> None:
        """A user without the responsible role can neither claim nor complete the task."""
        for resp in (self.claim(task_id, user), self.complete(task_id, user, variables or {})):
            detail = problem(resp, 403)["detail"]
            assert f"user {self.u(user)} may not work on task {task_id}" in detail and "it is for " in detail, detail

    def step(self, iid: str, key: str, user: str, variables: dict[str, Any], *, inbox: set[str],
             wrong: tuple[str, ...] = (), bad: tuple[dict[str, Any], tuple[str, ...]] | None = None,
             consulted_by: str | None = None) -> dict:
        """One human task: check who has it, who is refused, optionally a refused form and a required
        consultation, then ``user`` claims and completes it. Returns the completion answer."""
        task = self.task(iid, key)
        assert task["assignee"] is None
        assert self.inbox(task) == inbox, key
        for other in wrong:
            self.refused(task["id"], other, variables)
        ok(self.claim(task["id"], user), 204)
        assert self.cast.back(self.task(iid, key)["assignee"]) == user
        if consulted_by:  # consultation: required — blocked until the consulted role has an opinion
            body = problem(self.complete(task["id"], user, variables), 409)
            assert body["detail"].startswith(f"consultation pending: {self.role('configuration-manager')}"), body["detail"]
            ok(self.consult(task["id"], consulted_by, f"{consulted_by}: CMDB relations checked, no objection"), 201)
        if bad is not None:
            invalid(self.complete(task["id"], user, bad[0]), *bad[1])
        done = ok(self.complete(task["id"], user, variables))
        assert done["awaitingSignoff"] is False
        assert task["id"] not in [t["id"] for t in self.open_tasks(iid)]
        if key == "assess" and self.cast.security_officers and self.instance(iid)["state"] == "active":
            self.security_review(iid)
        return done

    def security_review(self, iid: str) -> None:
        """Northwind's added step (orgs/northwind/bpmn/change_normal.bpmn): after every assessment the security
        officer reviews the change before any authority decides; nobody else may, not even the coordinator."""
        task = self.task(iid, "security_review")
        assert task["name"] == "Security review" and task["candidateRoles"] == ["security-officer"]
        assert self.inbox(task) == self.cast.security_officers
        self.refused(task["id"], "bob")
        [officer] = sorted(self.cast.security_officers)
        review = {"securityRisk": "low", "controlsAffected": False, "securityReviewNotes": "No control weakened."}
        resp = self.c.post(f"/api/tasks/{task['id']}/complete", headers={"Authorization": f"Bearer demo-{officer}"},
                           json={"variables": {**review, "controlsAffected": True}})
        invalid(resp, "$.compensatingControls")  # Northwind's own form
        ok(self.c.post(f"/api/tasks/{task['id']}/complete", headers={"Authorization": f"Bearer demo-{officer}"},
                       json={"variables": review}))
    def vote(self, iid: str, votes: list[tuple[str, dict[str, Any]]], *, wrong: tuple[str, ...] = (),
             bad: tuple[dict[str, Any], tuple[str, ...]] | None = None) -> None:
        """The CAB votes (multi-instance ``cab_decision``: one task per vote the policy requires, each open to
        every CAB member). Each member in ``votes`` claims an open vote and casts it; a member who has voted
        is refused a second vote (SoD rule cab-one-vote-per-member). Voting stops as soon as the completion
        rule decides: afterwards no vote is open."""
        voted: list[str] = []
        for user, vote in votes:
            open_votes = [t for t in self.open_tasks(iid) if t["taskDefinitionKey"] == "cab_decision"]
            assert len(open_votes) == CAB_VOTES - len(voted), (user, self.open_keys(iid))
            task = open_votes[0]
            assert task["assignee"] is None and self.inbox(task) == CAB
            for other in wrong:
                self.refused(task["id"], other, vote)
            for member in voted:  # one vote per member
                detail = problem(self.claim(task["id"], member), 403)["detail"]
                assert "cab-one-vote-per-member" in detail, detail
            ok(self.claim(task["id"], user), 204)
            if bad is not None and not voted:
                invalid(self.complete(task["id"], user, bad[0]), *bad[1])
            ok(self.complete(task["id"], user, vote))
            voted.append(user)
        assert "cab_decision" not in self.open_keys(iid)

    def step_assigned(self, iid: str, key: str, user: str, variables: dict[str, Any], *, others: tuple[str, ...],
                      wrong: tuple[str, ...] = (), bad: tuple[dict[str, Any], tuple[str, ...]] | None = None) -> dict:
        """A task the process assigned to ``user`` (e.g. revise goes to whoever raised the RFC): only they
        see it; other holders of the role get 409 (assigned to someone else), people without it 403."""
        task = self.task(iid, key)
        assert self.cast.back(task["assignee"]) == user and self.inbox(task) == {user}
        for other in others:
            assert problem(self.claim(task["id"], other), 409)["detail"].endswith(f"already assigned to {self.u(user)}")
            problem(self.complete(task["id"], other, variables), 409)
        for other in wrong:
            self.refused(task["id"], other, variables)
        if bad is not None:
            invalid(self.complete(task["id"], user, bad[0]), *bad[1])
        done = ok(self.complete(task["id"], user, variables))
        assert task["id"] not in [t["id"] for t in self.open_tasks(iid)]
        return done

    # -- the audit trail ------------------------------------------------------------------------------
    def history(self, iid: str) -> list[dict]:
        """The trail over HTTP, with its hash chain recomputed from the answer and by the engine."""
        events = ok(self.c.get(f"/api/process-instances/{iid}/history", headers=H("admin")))
        prev, last_at = GENESIS, None
        for seq, e in enumerate(events, start=1):
            assert e["seq"] == seq and e["prevHash"] == prev, e
            at = datetime.fromisoformat(e["at"].replace("Z", "+00:00"))
            assert at.tzinfo is not None and (last_at is None or at >= last_at), e
            # the hashed form (itsmflow/engine/history.py): [prevHash, scope, seq, at as ISO 8601 UTC with
            # microseconds, actor, type, activityId, taskId, data as canonical JSON]
            data_json = json.dumps(e["data"], sort_keys=True, separators=(",", ":"))
            payload = json.dumps([prev, iid, seq, at.astimezone(timezone.utc).isoformat(timespec="microseconds"),
                                  e["actor"], e["type"], e["activityId"], e["taskId"], data_json],
                                 separators=(",", ":"))
            assert hashlib.sha256(payload.encode()).hexdigest() == e["hash"], f"event {seq} does not match its hash"
            prev, last_at = e["hash"], at
        verified = self.engine.history.verify(iid)
        assert [(v.ok, v.events) for v in verified] == [(True, len(events))], verified
        # in the example organisation's names (the chain was checked on what the server sent)
        return [{**e, "actor": self.cast.back(e["actor"])} for e in events]


def completions(events: list[dict], key: str) -> list[dict]:
    """The task_completed events of one task, in order: actor, timestamp, and the values it changed."""
    found = [e for e in events if e["type"] == "task_completed" and e["activityId"] == key]
    for e in found:
        assert e["at"] and e["taskId"] and e["actor"]
    return found


def new(event: dict, name: str) -> Any:
    """The value a completion gave a variable (as recorded in the audit trail)."""
    return event["data"]["changes"][name]["new"]


def completed_by(events: list[dict]) -> list[tuple[str, str]]:
    """Who completed which task, in order; Northwind's added security review is checked on its own (by
    ``Api.security_review`` and where a scenario asserts it) and left out here, so the pack's lifecycle
    reads the same for both organisations."""
    return [(e["activityId"], e["actor"]) for e in events if e["type"] == "task_completed"
            and e["activityId"] != "security_review"]


def thrown(events: list[dict]) -> list[str]:
    """Names of the messages the instance threw."""
    return [e["data"].get("name") for e in events if e["type"] == "message_thrown"]


def reached(events: list[dict], activity: str) -> bool:
    return any(e["type"] == "activity_completed" and e["activityId"] == activity for e in events)


# -- pack data ----------------------------------------------------------------------------------------
RFC = {
    **DEMO_RFC,  # the sample RFC of `itsmflow demo`
    "requestedWindow": {"start": "2030-03-09T20:00:00Z", "end": "2030-03-09T23:00:00Z"},
}
SIGNIFICANT = {"category": "significant", "risk": "medium", "priority": "medium", "businessImpact": "medium"}
MINOR = {"category": "minor", "risk": "low", "priority": "low", "businessImpact": "low"}
MAJOR = {"category": "major", "risk": "high", "priority": "high", "businessImpact": "high", "majorImpact": False}


def assessment(risk: str) -> dict[str, Any]:
    return {"risk": risk, "assessmentSummary": "Vendor-tested upgrade, one node at a time.",
            "serviceImpact": "Short delays in mail delivery.", "technicalFeasibility": "feasible",
            "securityControlsBypassed": False, "backOutPlanAdequate": True,
            "scheduleConflicts": "None on the schedule of change."}


WINDOW = {"plannedStart": "2030-03-09T20:00:00Z", "plannedEnd": "2030-03-09T23:00:00Z",
          "communicatedTo": ["service desk", "mail users"]}
BUILT = {"buildResult": "built", "buildSummary": "Packages staged on both nodes."}
PASSED = {"testResult": "passed", "testEvidence": "TP-17 run on staging.", "builtToSpecification": True,
          "verifiableDuringDeployment": True, "backOutTested": True}


def raise_and_assess(api: Api, initiator: str, classification: dict[str, Any], business_key: str,
                     rfc: dict[str, Any] | None = None) -> str:
    """RFC raised by ``initiator``, classified and assessed by the change manager (the configuration
    manager's opinion is required on ``assess``). Returns the instance id."""
    iid = api.start("change_normal", initiator, rfc or RFC, business_key)["id"]
    api.step(iid, "classify", "bob", classification, inbox=MANAGERS)
    api.step(iid, "assess", "bob", assessment(classification["risk"]), inbox=MANAGERS, consulted_by="erin")
    return iid


def build_test_deploy(api: Api, iid: str, *, builder: str, tester: str, implementer: str,
                      outcome: str = "successful") -> None:
    """From an approved, scheduled change to the deployment's outcome."""
    api.step(iid, "build", builder, BUILT, inbox=BUILDERS, wrong=("grace",))
    api.step(iid, "test", tester, PASSED, inbox=TESTERS, wrong=(builder,) if builder not in TESTERS else ())
    api.step(iid, "confirm_window", implementer, {"windowDecision": "proceed"}, inbox=IMPLEMENTERS)
    deploy = {"outcome": "successful", "implementationNotes": "Both nodes on 10.2, monitoring green.",
              "actualStart": "2030-03-09T20:05:00Z", "actualEnd": "2030-03-09T21:40:00Z"}
    if outcome == "unsuccessful":
        deploy = {**deploy, "outcome": "unsuccessful", "failureReason": "Node 2 did not rejoin the cluster."}
    api.step(iid, "deploy", implementer, deploy, inbox=IMPLEMENTERS, wrong=("bob",))


def assert_closed(api: Api, iid: str) -> dict:
    instance = api.instance(iid)
    assert instance["state"] == "completed", instance
    assert instance["activeActivities"] == [] and instance["incidents"] == []
    assert api.open_tasks(iid) == []
    return instance


# -- normal change ------------------------------------------------------------------------------------
def test_normal_change_approved_and_successful(iso):
    api = iso
    # the RFC form refuses an incomplete request with unknown fields; nothing is started
    invalid(api.c.post("/api/process-definitions/key/change_normal/start", headers=H("judy"),
                       json={"variables": {**RFC, "summary": "", "colour": "red"}}), "$.summary", "$.colour")
    assert ok(api.c.get("/api/process-instances", headers=H("admin"), params={"businessKey": "RFC-100"})) == []
    iid = api.start("change_normal", "judy", RFC, "RFC-100")["id"]

    api.step(iid, "classify", "bob", SIGNIFICANT, inbox=MANAGERS, wrong=("grace", "judy"),
             bad=({**SIGNIFICANT, "category": "huge"}, ("$.category",)))

    # assess: the configuration manager is consulted (required). Only a consulted role may give the opinion.
    assess = api.task(iid, "assess")
    assert api.inbox(assess) == MANAGERS
    problem(api.consult(assess["id"], "grace", "looks fine"), 403)
    ok(api.claim(assess["id"], "bob"), 204)
    body = problem(api.complete(assess["id"], "bob", assessment("medium")), 409)
    assert body["detail"].startswith(f"consultation pending: {api.role('configuration-manager')}")
    assert api.task(iid, "assess")["state"] == "open"
    opinion = ok(api.consult(assess["id"], "erin", "Two CIs, no shared dependencies in the CMDB"), 201)
    assert [(o["role"], o["userId"]) for o in opinion] == [(api.role("configuration-manager"), api.u("erin"))]
    ok(api.complete(assess["id"], "bob", assessment("medium")))
    if api.cast.security_officers:  # Northwind: its security review comes next
        api.security_review(iid)
    assert api.instance(iid)["variables"]["required_authority"] == "change-authority"  # policy change_authority

    # a single change authority decides: a change manager may not, a bad decision value is refused
    api.step(iid, "authorise", "carol", {"decision": "approved", "conditions": "Node 1 first, then node 2."},
             inbox=AUTHORITIES, wrong=("bob", "heidi"), bad=({"decision": "maybe"}, ("$.decision",)))
    api.step(iid, "schedule", "bob", WINDOW, inbox=MANAGERS, wrong=("carol",))
    assert api.instance(iid)["variables"]["schedule_clash"] is None
    api.step(iid, "build", "heidi", BUILT, inbox=BUILDERS, wrong=("grace",))
    api.step(iid, "test", "grace", PASSED, inbox=TESTERS, wrong=("heidi",),
             bad=({**PASSED, "backOutTested": False}, ("$.backOutTested",)))  # a pass needs a tested back-out
    api.step(iid, "confirm_window", "ivan", {"windowDecision": "proceed"}, inbox=IMPLEMENTERS, wrong=("frank",))
    api.step(iid, "deploy", "priya", {"outcome": "successful", "implementationNotes": "Both nodes on 10.2.",
                                      "actualStart": "2030-03-09T20:05:00Z", "actualEnd": "2030-03-09T21:40:00Z"},
             inbox=IMPLEMENTERS, wrong=("bob",))
    assert api.instance(iid)["variables"]["pir_required"] is True  # significant: full PIR (policy pir_required)
    api.step(iid, "pir", "bob", {"reviewOutcome": "objectives_met", "lessonsLearned": "Stage both nodes first.",
                                 "documentationComplete": True, "actualCost": 3800},
             inbox=MANAGERS, wrong=("priya",), bad=({"reviewOutcome": "objectives_met"}, ("$.lessonsLearned",)))
    instance = assert_closed(api, iid)
    assert instance["variables"]["outcome"] == "successful"

    events = api.history(iid)
    assert events[0]["type"] == "process_started" and events[0]["actor"] == "judy"
    assert completed_by(events) == [("classify", "bob"), ("assess", "bob"), ("authorise", "carol"),
                                    ("schedule", "bob"), ("build", "heidi"), ("test", "grace"),
                                    ("confirm_window", "ivan"), ("deploy", "priya"), ("pir", "bob")]
    [approval] = completions(events, "authorise")
    assert new(approval, "decision") == "approved" and new(approval, "conditions").startswith("Node 1")
    consulted = [e for e in events if e["type"] == "consultation_recorded"]
    assert [(e["actor"], e["activityId"]) for e in consulted] == [("erin", "assess")]
    assert thrown(events).count("configuration_update") == 1
    assert reached(events, "end_closed")
    # the initiator (RACI informed on authorise) was told of the decision
    notes = ok(api.c.get("/api/notifications", headers=H("judy")))
    assert any(n["type"] == "task_completed" and n["processInstanceId"] == iid and n["activityId"] == "authorise"
               for n in notes)

    # where the organisations differ: Northwind's security review between assessment and authorisation, its
    # own names for the process and its tasks; the example organisation runs the pack as it is
    reviews = completions(events, "security_review")
    definition = ok(api.c.get("/api/process-definitions/key/change_normal", headers=H("admin")))
    if api.cast.name == "northwind":
        assert [e["actor"] for e in reviews] == ["sefa"]
        order = [e["activityId"] for e in events if e["type"] == "task_completed"]
        assert order.index("assess") < order.index("security_review") < order.index("authorise")
        assert definition["name"] == "Northwind request for change"
    else:
        assert reviews == [] and definition["name"] == "Normal change"
    done = ok(api.c.get("/api/tasks", headers=H("admin"), params={"processInstanceId": iid, "state": "completed",
                                                                  "taskDefinitionKey": "classify"}))
    assert [t["name"] for t in done] == ["Triage the RFC" if api.cast.name == "northwind" else "Classify RFC"]
    assert done[0]["candidateRoles"] == [api.role("change-manager")]


def test_change_authority_follows_the_organisation_policy(iso):
    """The same minor, low-risk change costing 8 000 EUR: within the change manager's authority in the example
    organisation (pack thresholds 10 000 / 100 000), but above Northwind's CAB threshold (5 000): its change
    board votes on it."""
    api = iso
    iid = raise_and_assess(api, "sam", MINOR, "RFC-900", {**RFC, "estimatedCost": 8000})
    variables = api.instance(iid)["variables"]
    assert variables["policies"]["change_authority"]["cost_thresholds"] == \
        api.policy("change_authority")["cost_thresholds"]
    if api.cast.name == "northwind":
        assert variables["required_authority"] == "cab"
        assert api.open_keys(iid) == ["cab_decision"] * CAB_VOTES
        [vote, *_] = [t for t in api.open_tasks(iid) if t["taskDefinitionKey"] == "cab_decision"]
        assert vote["candidateRoles"] == [api.role("cab-member")] == ["change-board"]
        api.vote(iid, [("carol", {"decision": "approved"}), ("dave", {"decision": "approved"})], wrong=("bob", "sam"))
    else:
        assert variables["required_authority"] == "change-manager"
        task = api.task(iid, "authorise_manager")
        assert task["candidateRoles"] == ["change-manager"]
        api.step(iid, "authorise_manager", "bob", {"decision": "approved"}, inbox=MANAGERS, wrong=("carol", "sam"))
    assert api.open_keys(iid) == ["schedule"]
    assert api.instance(iid)["variables"]["decision"] == "approved"


def test_normal_change_rejected_then_resubmitted(iso):
    api = iso
    rfc = {**RFC, "estimatedCost": 150000, "backOutPlan": {"approach": "reverse", "steps": "Reinstall 9.8."}}
    iid = raise_and_assess(api, "frank", MAJOR, "RFC-200", rfc)
    assert api.instance(iid)["variables"]["required_authority"] == "cab"  # major, high risk, above 100 000

    # the CAB decides by majority of three votes (policy change_authority, cab); a rejection needs a reason;
    # the initiator may not vote, and nobody votes twice
    assert CAB_VOTES == 3
    reason = "The back-out plan has not been tested; test it on staging and resubmit."
    votes = [("carol", {"decision": "rejected", "reason": reason, "minutesReference": "CAB-2030-10"}),
             ("dave", {"decision": "approved", "conditions": "Only with a tested back-out."}),
             ("erin", {"decision": "rejected", "reason": "Too close to the quarter end."})]
    api.vote(iid, votes, wrong=("frank", "bob"), bad=({"decision": "rejected"}, ("$.reason",)))
    cab_decision = api.instance(iid)["variables"]["cabDecision"]
    assert cab_decision == {"rule": "majority", "votesRequired": 3, "approvals": 1, "rejections": 2,
                            "decision": "rejected", "voters": [api.u(v) for v in ("carol", "dave", "erin")]}

    # back to the initiator who raised it, with the reasons of the votes against (variables and audit trail)
    revise = api.task(iid, "revise")
    reasons = f"{api.u('carol')}: {reason}; {api.u('erin')}: Too close to the quarter end."
    assert api.instance(iid)["variables"]["reason"] == reasons
    revise_form = api.form(revise["id"], "frank")  # what the initiator sees when revising
    resubmit = {"revisionAction": "resubmit", "revisionNotes": "Back-out tested on staging (TP-18).",
                "backOutPlan": {"approach": "reverse", "steps": "Reinstall 9.8.", "tested": True},
                "estimatedCost": 4000}
    api.step_assigned(iid, "revise", "frank", resubmit, others=("alice", "judy"), wrong=("carol",),
                      bad=({"revisionAction": "resubmit"}, ("$.revisionNotes",)))
    assert revise["id"] not in [t["id"] for t in api.open_tasks(iid)]

    # resubmitted: classified and assessed again, and back to the CAB, which approves this time
    api.step(iid, "classify", "bob", MAJOR, inbox=MANAGERS)
    api.step(iid, "assess", "bob", assessment("high"), inbox=MANAGERS, consulted_by="ivan")
    assert api.instance(iid)["variables"]["required_authority"] == "cab"
    approval = {"decision": "approved", "conditions": "Announce the window to all business units.",
                "minutesReference": "CAB-2030-11"}
    # two approvals of three decide the majority: the third vote is withdrawn
    api.vote(iid, [("erin", approval), ("dave", {"decision": "approved"})], wrong=("alice",))
    variables = api.instance(iid)["variables"]
    assert variables["decision"] == "approved" and variables["reason"] is None
    assert variables["conditions"] == f"{api.u('erin')}: Announce the window to all business units."
    api.step(iid, "schedule", "bob", WINDOW, inbox=MANAGERS)
    build_test_deploy(api, iid, builder="frank", tester="quentin", implementer="heidi")
    api.step(iid, "pir", "bob", {"reviewOutcome": "objectives_met", "lessonsLearned": "Test back-outs early.",
                                 "documentationComplete": True}, inbox=MANAGERS)
    assert_closed(api, iid)

    events = api.history(iid)
    cab = completions(events, "cab_decision")
    assert [(e["actor"], e["data"]["submitted"]["decision"]) for e in cab] == [
        ("carol", "rejected"), ("dave", "approved"), ("erin", "rejected"), ("erin", "approved"), ("dave", "approved")]
    assert cab[0]["data"]["submitted"]["reason"] == reason
    approved = cab[3]
    [revised] = completions(events, "revise")
    assert revised["actor"] == "frank" and new(revised, "revisionAction") == "resubmit"
    assert [e["actor"] for e in completions(events, "classify")] == ["bob", "bob"]
    assert [e["actor"] for e in completions(events, "assess")] == ["bob", "bob"]
    assert approved["data"]["submitted"]["minutesReference"] == "CAB-2030-11"
    assert cab[2]["at"] < revised["at"] < approved["at"]
    tallies = [e for e in events if e["type"] == "activity_completed" and e["activityId"] == "record_authorisation"]
    assert [t["data"]["changes"]["cabDecision"]["new"]["decision"] for t in tallies] == ["rejected", "approved"]
    assert not completions(events, "authorise") and not completions(events, "authorise_manager")
    consulted = [(e["actor"], e["activityId"]) for e in events if e["type"] == "consultation_recorded"]
    assert consulted == [("erin", "assess"), ("ivan", "assess")]

    # The rejection's reason must reach the initiator with the revise task (R5: "rejected RFCs go back to the
    # initiator with reasons"; the form's own description says "see `reason`"). Checked last so that the rest
    # of the lifecycle is covered.
    assert revise_form["data"].get("reason") == reasons, (
        "PACK DEFECT: GET /api/tasks/{id}/form of the 'revise' task does not show the rejection reason: form "
        "change_revise declares no (readOnly) field 'reason', and the form endpoint returns only the form's "
        f"fields; data = {revise_form['data']}")


def test_normal_change_freeze_window_clash(iso):
    api = iso
    freeze = api.policy("freeze_windows")["windows"][-1]  # the organisation's (Northwind tailors them)
    inside = datetime.fromisoformat(freeze["start"].replace("Z", "+00:00")) + timedelta(days=2)
    clash = {"plannedStart": inside.strftime("%Y-%m-%dT%H:%M:%SZ"),
             "plannedEnd": (inside + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}

    iid = raise_and_assess(api, "sam", MINOR, "RFC-300", {**RFC, "estimatedCost": 300})
    # minor, low risk, low cost: within the change manager's own authority (and sam is not bob)
    api.step(iid, "authorise_manager", "bob", {"decision": "approved"}, inbox=MANAGERS, wrong=("carol", "sam"))

    first = api.task(iid, "schedule")
    api.step(iid, "schedule", "bob", clash, inbox=MANAGERS, wrong=("dave",),
             bad=({"plannedStart": "Christmas Eve", "plannedEnd": clash["plannedEnd"]}, ("$.plannedStart",)))
    # the window clashes with the freeze: back to scheduling, with the reason
    again = api.task(iid, "schedule")
    assert again["id"] != first["id"] and api.open_keys(iid) == ["schedule"]
    assert api.inbox(again) == MANAGERS
    variables = api.instance(iid)["variables"]
    assert freeze["reason"] in variables["schedule_clash"], variables["schedule_clash"]
    clash_form = api.form(again["id"], "bob")  # what the change manager sees when re-planning

    api.step(iid, "schedule", "bob", WINDOW, inbox=MANAGERS)
    assert api.instance(iid)["variables"]["schedule_clash"] is None
    build_test_deploy(api, iid, builder="heidi", tester="quentin", implementer="ivan")
    # minor and successful: summary review by the change manager
    api.step(iid, "verify_close", "bob", {"reviewOutcome": "objectives_met", "lessonsLearned": "none",
                                          "ciLinksVerified": True, "documentationComplete": True},
             inbox=MANAGERS, wrong=("ivan",),
             bad=({"reviewOutcome": "objectives_met", "lessonsLearned": "none", "ciLinksVerified": True,
                   "documentationComplete": False}, ("$.documentationComplete",)))
    assert_closed(api, iid)

    events = api.history(iid)
    schedules = completions(events, "schedule")
    assert [e["actor"] for e in schedules] == ["bob", "bob"]
    assert new(schedules[0], "plannedStart") == clash["plannedStart"]
    assert new(schedules[1], "plannedStart") == WINDOW["plannedStart"]
    checks = [e for e in events if e["type"] == "activity_completed" and e["activityId"] == "check_freeze"]
    assert len(checks) == 2 and freeze["reason"] in checks[0]["data"]["changes"]["schedule_clash"]["new"]
    [approval] = completions(events, "authorise_manager")
    assert approval["actor"] == "bob" and new(approval, "decision") == "approved"
    assert reached(events, "end_closed") and not completions(events, "pir")

    # The clash reason must reach the person re-planning through the task's form (issue 6: "returns to
    # scheduling with the clash reason"). Checked last so that the rest of the lifecycle is covered.
    assert "schedule_clash" in clash_form["data"] and freeze["reason"] in str(clash_form["data"]["schedule_clash"]), (
        "PACK DEFECT: GET /api/tasks/{id}/form of the re-opened 'schedule' task does not show the freeze clash: "
        "form change_schedule declares no (readOnly) field 'schedule_clash', and the form endpoint returns only "
        f"the form's fields; data = {clash_form['data']}")


def test_normal_change_unsuccessful_backed_out(iso):
    api = iso
    iid = raise_and_assess(api, "judy", SIGNIFICANT, "RFC-400")
    api.step(iid, "authorise", "dave", {"decision": "approved"}, inbox=AUTHORITIES, wrong=("judy",))
    api.step(iid, "schedule", "bob", WINDOW, inbox=MANAGERS)
    api.step(iid, "build", "frank", BUILT, inbox=BUILDERS)
    api.step(iid, "test", "quentin", PASSED, inbox=TESTERS, wrong=("frank",))
    api.step(iid, "confirm_window", "heidi", {"windowDecision": "proceed"}, inbox=IMPLEMENTERS)
    failed = {"outcome": "unsuccessful", "implementationNotes": "Node 1 upgraded; node 2 failed to start.",
              "failureReason": "Node 2 did not rejoin the cluster after the upgrade."}
    api.step(iid, "deploy", "heidi", failed, inbox=IMPLEMENTERS, wrong=("grace",),
             bad=({k: v for k, v in failed.items() if k != "failureReason"}, ("$.failureReason",)))
    # unsuccessful: reversed following the plan, by an implementer
    backout = {"remediationAction": "reversed", "actionsTaken": "Reinstalled 9.8 on node 2, restored config.",
               "followedPlan": True, "configurationRestored": True,
               "failureInvestigation": "Cluster key format changed in 10.x.",
               "followUpActions": ["Raise a problem record", "Re-plan with the vendor"],
               "incidentReference": "INC-4711"}
    api.step(iid, "backout", "heidi", backout, inbox=IMPLEMENTERS, wrong=("bob",),
             bad=({**backout, "remediationAction": "ignored"}, ("$.remediationAction",)))
    variables = api.instance(iid)["variables"]
    assert variables["pir_required"] is True  # failed changes always get a full PIR (policy pir_required)
    api.step(iid, "pir", "bob", {"reviewOutcome": "not_met", "lessonsLearned": "Check cluster compatibility.",
                                 "documentationComplete": True, "sideEffects": "30 minutes of mail delay."},
             inbox=MANAGERS, wrong=("ivan",))
    instance = assert_closed(api, iid)
    assert instance["variables"]["outcome"] == "unsuccessful"

    events = api.history(iid)
    [deploy] = completions(events, "deploy")
    assert deploy["actor"] == "heidi" and new(deploy, "outcome") == "unsuccessful"
    assert new(deploy, "failureReason").startswith("Node 2")
    [backed_out] = completions(events, "backout")
    assert backed_out["actor"] == "heidi" and new(backed_out, "remediationAction") == "reversed"
    [review] = completions(events, "pir")
    assert review["actor"] == "bob" and new(review, "reviewOutcome") == "not_met"
    # no CMDB update for a change that was backed out
    assert "configuration_update" not in thrown(events)
    assert not reached(events, "throw_config_update") and reached(events, "end_closed")


def test_normal_change_rejected_then_withdrawn(iso):
    api = iso
    iid = raise_and_assess(api, "sam", MINOR, "RFC-450", {**RFC, "estimatedCost": 300})
    reason = "Duplicate of RFC-300, which is already scheduled."
    api.step(iid, "authorise_manager", "bob", {"decision": "rejected", "reason": reason}, inbox=MANAGERS,
             wrong=("carol",), bad=({"decision": "rejected"}, ("$.reason",)))
    withdraw = {"revisionAction": "withdraw", "withdrawalReason": "Covered by RFC-300."}
    api.step_assigned(iid, "revise", "sam", withdraw, others=("frank",), wrong=("bob",),
                      bad=({"revisionAction": "withdraw"}, ("$.withdrawalReason",)))
    assert_closed(api, iid)
    events = api.history(iid)
    [rejection] = completions(events, "authorise_manager")
    assert rejection["actor"] == "bob" and new(rejection, "decision") == "rejected"
    assert new(rejection, "reason") == reason
    [withdrawn] = completions(events, "revise")
    assert withdrawn["actor"] == "sam" and new(withdrawn, "revisionAction") == "withdraw"
    assert reached(events, "end_withdrawn") and not completions(events, "schedule")


def test_normal_change_not_built_test_failed_and_rescheduled(iso):
    """The rework loops: a change that cannot be built is re-assessed and re-approved; a failed test goes
    back to the builders; a new date is re-assessed and re-approved, without building again."""
    api = iso
    iid = raise_and_assess(api, "judy", SIGNIFICANT, "RFC-460")
    api.step(iid, "authorise", "carol", {"decision": "approved"}, inbox=AUTHORITIES)
    api.step(iid, "schedule", "bob", WINDOW, inbox=MANAGERS)
    cannot = {"buildResult": "cannot_build", "buildIssue": "10.2 needs a newer OS than the gateways run."}
    api.step(iid, "build", "heidi", cannot, inbox=BUILDERS, wrong=("ivan",),
             bad=({"buildResult": "cannot_build"}, ("$.buildIssue",)))
    # reported back: assessed and approved again
    api.step(iid, "assess", "bob", assessment("medium"), inbox=MANAGERS, consulted_by="ivan")
    api.step(iid, "authorise", "dave", {"decision": "approved", "conditions": "OS upgrade first."},
             inbox=AUTHORITIES)
    api.step(iid, "schedule", "bob", WINDOW, inbox=MANAGERS)
    api.step(iid, "build", "frank", BUILT, inbox=BUILDERS)
    failed = {"testResult": "failed", "testEvidence": "TP-17 run on staging.", "builtToSpecification": False,
              "verifiableDuringDeployment": True, "backOutTested": True, "testFailures": "TLS ciphers missing."}
    api.step(iid, "test", "grace", failed, inbox=TESTERS, wrong=("frank",),
             bad=({k: v for k, v in failed.items() if k != "testFailures"}, ("$.testFailures",)))
    api.step(iid, "build", "heidi", BUILT, inbox=BUILDERS)  # back to the builders
    api.step(iid, "test", "quentin", PASSED, inbox=TESTERS)
    reschedule = {"windowDecision": "reschedule", "rescheduleReason": "The data centre move takes that weekend.",
                  "proposedStart": "2030-03-16T20:00:00Z", "proposedEnd": "2030-03-16T23:00:00Z"}
    api.step(iid, "confirm_window", "ivan", reschedule, inbox=IMPLEMENTERS, wrong=("bob",),
             bad=({"windowDecision": "reschedule"}, ("$.rescheduleReason",)))
    # a new date: re-assessed and re-approved, then straight to the window (built and tested already)
    api.step(iid, "assess", "bob", assessment("medium"), inbox=MANAGERS, consulted_by="erin")
    api.step(iid, "authorise", "carol", {"decision": "approved"}, inbox=AUTHORITIES)
    api.step(iid, "schedule", "bob", {"plannedStart": "2030-03-16T20:00:00Z", "plannedEnd": "2030-03-16T23:00:00Z"},
             inbox=MANAGERS)
    assert api.open_keys(iid) == ["confirm_window"]
    api.step(iid, "confirm_window", "priya", {"windowDecision": "proceed"}, inbox=IMPLEMENTERS)
    api.step(iid, "deploy", "priya", {"outcome": "successful", "implementationNotes": "Done."}, inbox=IMPLEMENTERS)
    api.step(iid, "pir", "bob", {"reviewOutcome": "partially_met", "lessonsLearned": "Check OS prerequisites.",
                                 "documentationComplete": True}, inbox=MANAGERS)
    assert_closed(api, iid)
    events = api.history(iid)
    assert completed_by(events) == [
        ("classify", "bob"), ("assess", "bob"), ("authorise", "carol"), ("schedule", "bob"), ("build", "heidi"),
        ("assess", "bob"), ("authorise", "dave"), ("schedule", "bob"), ("build", "frank"), ("test", "grace"),
        ("build", "heidi"), ("test", "quentin"), ("confirm_window", "ivan"),
        ("assess", "bob"), ("authorise", "carol"), ("schedule", "bob"), ("confirm_window", "priya"),
        ("deploy", "priya"), ("pir", "bob")]
    assert new(completions(events, "build")[0], "buildResult") == "cannot_build"
    assert new(completions(events, "test")[0], "testResult") == "failed"
    assert new(completions(events, "confirm_window")[0], "windowDecision") == "reschedule"

    # Every authorisation is evidence of a decision ("decider, time, decision", docs/traceability-change.md):
    # each of the three approvals' audit events must say what was decided. Checked last so that the rest
    # of the lifecycle is covered.
    recorded = [(e["actor"], e["data"]["submitted"].get("decision")) for e in completions(events, "authorise")]
    assert recorded == [("carol", "approved"), ("dave", "approved"), ("carol", "approved")], recorded


# -- emergency change ---------------------------------------------------------------------------------
EMERGENCY_RFC = {
    "summary": "Block the exploited VPN login path",
    "description": "Disable the legacy authentication endpoint on the VPN concentrators.",
    "emergencyCriterion": "security_threat",
    "emergencyJustification": "The endpoint is being exploited now (security incident SI-88).",
    "affectedServices": ["remote access"],
    "affectedCis": [{"ciId": "vpn-01", "ciType": "network_device"}],
    "linkedIncident": "SI-88",
    "proposedAction": "Apply the vendor's configuration change to disable the endpoint.",
    "backOutPlan": {"approach": "reverse", "steps": "Re-enable the endpoint."},
}


def test_emergency_change_late_approval_not_true_emergency(iso):
    api = iso
    engine = api.engine
    incomplete = {k: v for k, v in EMERGENCY_RFC.items() if k != "emergencyJustification"}
    invalid(api.c.post("/api/process-definitions/key/change_emergency/start", headers=H("judy"),
                       json={"variables": incomplete}), "$.emergencyJustification")
    iid = api.start("change_emergency", "judy", EMERGENCY_RFC, "ECR-500")["id"]
    variables = api.instance(iid)["variables"]
    assert variables["ecab_deadline"] == "PT1H" and variables["emergency_criterion_recognised"] is True

    approval = api.task(iid, "ecab_approval")
    assert api.inbox(approval) == AUTHORITIES
    api.refused(approval["id"], "judy")  # the initiator holds no authority role
    api.refused(approval["id"], "bob")

    # the approval deadline (policy emergency) passes: bring the timer due and run the job executor
    assert engine.jobs.run_due() == 0
    with engine.db.begin() as conn:
        moved = conn.execute(text("UPDATE job SET due_at = :t WHERE instance_id = :i"),
                             {"t": datetime(2000, 1, 1, tzinfo=timezone.utc), "i": iid}).rowcount
    assert moved == 1
    assert engine.jobs.run_due() == 1
    # non-interrupting: the escalation is the change manager's, the approval stays open as it was
    assert api.open_keys(iid) == ["ecab_approval", "escalate_approval"]
    assert api.task(iid, "ecab_approval")["id"] == approval["id"]
    api.step(iid, "escalate_approval", "bob", {"escalationAction": "chased_approvers",
                                               "escalationNotes": "Called the on-call approvers."},
             inbox=MANAGERS, wrong=("carol",), bad=({"escalationAction": "shouted"}, ("$.escalationAction",)))
    assert api.open_keys(iid) == ["ecab_approval"]

    api.step(iid, "ecab_approval", "carol", {"decision": "approved", "approvers": ["carol", "dave"],
                                             "approvalChannel": "phone", "securityControlsBypassed": False},
             inbox=AUTHORITIES, bad=({"decision": "approved", "approvalChannel": "phone"}, ("$.approvers",)))
    api.step(iid, "implement", "ivan", {"outcome": "successful", "implementationNotes": "Endpoint disabled.",
                                        "deferredSteps": ["independent test"]},
             inbox=IMPLEMENTERS, wrong=("carol",))
    review = {"bypassedStepsCompleted": True, "documentationComplete": True, "trueEmergency": False,
              "trueEmergencyRationale": "The endpoint could have been closed in the next day's normal window.",
              "reviewOutcome": "objectives_met", "lessonsLearned": "Use the normal route for next-day fixes."}
    api.step(iid, "review", "bob", review, inbox=MANAGERS, wrong=("ivan",),
             bad=({k: v for k, v in review.items() if k != "trueEmergency"}, ("$.trueEmergency",)))
    # not a true emergency: the misuse is reported to the service owner
    misuse = {"misuseFindings": "Emergency route used for a change that could wait a day.",
              "correctiveAction": "Brief the service desk on the emergency criteria.", "reportedTo": ["dave"]}
    api.step(iid, "report_misuse", "dave", misuse, inbox=SERVICE_OWNERS, wrong=("bob", "judy"))
    assert_closed(api, iid)

    events = api.history(iid)
    assert events[0]["actor"] == "judy"
    assert completed_by(events) == [("escalate_approval", "bob"), ("ecab_approval", "carol"),
                                    ("implement", "ivan"), ("review", "bob"), ("report_misuse", "dave")]
    timer = [e for e in events if e["activityId"] == "ecab_late"]
    assert timer, "the escalation timer's firing is not in the trail"
    [decision] = completions(events, "ecab_approval")
    assert new(decision, "decision") == "approved" and new(decision, "approvers") == ["carol", "dave"]
    assert timer[0]["at"] < decision["at"]  # the approval came after the deadline had passed
    [reviewed] = completions(events, "review")
    assert new(reviewed, "trueEmergency") is False
    assert reached(events, "end_misuse_reported") and reached(events, "end_escalated")
    assert not reached(events, "end_closed")


def test_emergency_change_rejected(iso):
    api = iso
    iid = api.start("change_emergency", "alice", EMERGENCY_RFC, "ECR-550")["id"]
    approval = api.task(iid, "ecab_approval")
    assert api.inbox(approval) == AUTHORITIES
    # alice holds change-authority but raised it: segregation of duties
    for resp in (api.claim(approval["id"], "alice"),
                 api.complete(approval["id"], "alice", {"decision": "approved", "approvers": ["alice"],
                                                        "approvalChannel": "chat"})):
        assert "emergency-initiator-cannot-approve" in problem(resp, 403)["detail"]
    reason = "Not exploited on our version; apply through the normal procedure."
    rejection = {"decision": "rejected", "reason": reason, "approvers": ["dave", "carol"],
                 "approvalChannel": "meeting"}
    api.step(iid, "ecab_approval", "dave", rejection, inbox=AUTHORITIES, wrong=("bob",),
             bad=({k: v for k, v in rejection.items() if k != "reason"}, ("$.reason",)))
    assert_closed(api, iid)
    with api.engine.db.connect() as conn:  # the escalation timer went with the approval
        assert conn.execute(text("SELECT count(*) FROM job WHERE instance_id = :i"), {"i": iid}).scalar() == 0
    events = api.history(iid)
    [decision] = completions(events, "ecab_approval")
    assert decision["actor"] == "dave" and new(decision, "decision") == "rejected"
    assert new(decision, "reason") == reason
    assert reached(events, "end_rejected") and not completions(events, "implement")


# -- pre-approved change ------------------------------------------------------------------------------
ACCESS_REQUEST = {
    "model": "std-application-access",
    "summary": "Give Lena the CRM sales role",
    "affectedCis": [{"ciId": "crm", "ciType": "application"}],
    "affectedServices": ["crm"],
    "risk": "low",
    "parameters": {"user": "lena", "role": "sales"},
}


def test_preapproved_change_happy_path(iso):
    api = iso
    invalid(api.c.post("/api/process-definitions/key/change_preapproved/start", headers=H("judy"),
                       json={"variables": {**ACCESS_REQUEST, "model": "Std Access!"}}), "$.model")
    iid = api.start("change_preapproved", "judy", ACCESS_REQUEST, "SCR-600")["id"]
    variables = api.instance(iid)["variables"]
    assert variables["model_matched"] is True and variables["preapproved_model"]["id"] == "std-application-access"
    assert api.open_keys(iid) == ["implement"]  # no assessment, no authorisation: the model is pre-approved
    done = {"outcome": "successful", "implementationNotes": "Role granted per WI-ACC-001.",
            "successChecks": ["User can sign in with the granted role", "Access owner informed"]}
    api.step(iid, "implement", "priya", done, inbox=IMPLEMENTERS, wrong=("judy", "bob"),
             bad=({"outcome": "unsuccessful", "implementationNotes": "x"}, ("$.remediationActions",)))
    assert_closed(api, iid)

    events = api.history(iid)
    assert events[0]["actor"] == "judy"
    [implemented] = completions(events, "implement")
    assert implemented["actor"] == "priya" and new(implemented, "outcome") == "successful"
    assert thrown(events).count("configuration_update") == 1
    assert reached(events, "end_closed") and not completions(events, "review_model")


def test_preapproved_change_refused(iso):
    api = iso
    cases = [  # requester, request, why it does not fit its model
        ("judy", {**ACCESS_REQUEST, "model": "std-filesystem-extension",
                  "affectedCis": [{"ciId": "srv-db-01", "ciType": "server"}]}, "is suspended"),
        ("sam", {**ACCESS_REQUEST, "risk": "high"}, "above the maximum risk"),
        ("alice", {**ACCESS_REQUEST, "affectedCis": [{"ciId": "srv-db-01", "ciType": "server"}]},
         "is not of a type model 'std-application-access' allows"),
        ("frank", {**ACCESS_REQUEST, "model": "std-coffee-machine"}, "no pre-approved change model"),
    ]
    for n, (requester, request, why) in enumerate(cases):
        iid = api.start("change_preapproved", requester, request, f"SCR-70{n}")["id"]
        instance = assert_closed(api, iid)  # refused at once: nobody gets a task
        assert instance["variables"]["model_matched"] is False
        assert why in instance["variables"]["refusalReason"], instance["variables"]["refusalReason"]
        for implementer in IMPLEMENTERS:
            inbox = ok(api.c.get("/api/tasks", headers=H(implementer),
                                 params={"candidateUser": api.u(implementer), "processInstanceId": iid}))
            assert inbox == []
        events = api.history(iid)
        assert events[0]["actor"] == requester
        assert reached(events, "end_refused") and not reached(events, "implement")
        assert not any(e["type"] == "task_created" for e in events) and "configuration_update" not in thrown(events)
        refusal = [e for e in events if e["activityId"] == "check_model"][-1]
        assert why in refusal["data"]["changes"]["refusalReason"]["new"]


def test_preapproved_change_failed_model_reviewed(iso):
    api = iso
    patch = {"model": "std-os-security-patch", "summary": "March security patch on srv-web-01",
             "affectedCis": [{"ciId": "srv-web-01", "ciType": "server"}], "risk": "low"}
    iid = api.start("change_preapproved", "frank", patch, "SCR-650")["id"]
    failed = {"outcome": "unsuccessful", "implementationNotes": "Server did not come back after reboot.",
              "remediationActions": "Restored the pre-change snapshot."}
    api.step(iid, "implement", "heidi", failed, inbox=IMPLEMENTERS, wrong=("frank",))
    # a failing pre-approved model goes back to the change manager
    review = {"reviewOutcome": "model_amended", "lessonsLearned": "Snapshot before every patch; add a check.",
              "catalogueChangeReference": "RFC-999"}
    api.step(iid, "review_model", "bob", review, inbox=MANAGERS, wrong=("heidi", "frank"),
             bad=({**review, "reviewOutcome": "model_kept_forever"}, ("$.reviewOutcome",)))
    assert_closed(api, iid)
    events = api.history(iid)
    assert completed_by(events) == [("implement", "heidi"), ("review_model", "bob")]
    assert new(completions(events, "review_model")[0], "reviewOutcome") == "model_amended"
    assert reached(events, "end_closed_unsuccessful") and "configuration_update" not in thrown(events)


# -- segregation of duties ----------------------------------------------------------------------------
def test_initiator_who_is_also_authority_cannot_authorise_own_change(iso):
    api = iso
    iid = raise_and_assess(api, "alice", SIGNIFICANT, "RFC-800")
    authorise = api.task(iid, "authorise")
    # alice holds change-authority: the task is in her inbox, but the SoD rule refuses her every act on it
    assert api.inbox(authorise) == AUTHORITIES and "alice" in AUTHORITIES
    for resp in (api.claim(authorise["id"], "alice"), api.complete(authorise["id"], "alice", {"decision": "approved"})):
        detail = problem(resp, 403)["detail"]
        assert "initiator-cannot-authorise" in detail and "may not authorise it" in detail, detail
    assert api.task(iid, "authorise")["assignee"] is None  # nothing changed
    # nor can another authority hand it to her
    ok(api.claim(authorise["id"], "dave"), 204)
    detail = problem(api.c.post(f"/api/tasks/{authorise['id']}/delegate", headers=H("dave"),
                                json={"userId": api.u("alice")}), 403)["detail"]
    assert "initiator-cannot-authorise" in detail
    ok(api.c.post(f"/api/tasks/{authorise['id']}/unclaim", headers=H("dave")), 204)
    # a second change authority can
    api.step(iid, "authorise", "carol", {"decision": "approved"}, inbox=AUTHORITIES, wrong=("bob",))
    api.step(iid, "schedule", "bob", WINDOW, inbox=MANAGERS)
    build_test_deploy(api, iid, builder="heidi", tester="grace", implementer="priya")
    api.step(iid, "pir", "bob", {"reviewOutcome": "objectives_met", "lessonsLearned": "none",
                                 "documentationComplete": True}, inbox=MANAGERS)
    assert_closed(api, iid)
    events = api.history(iid)
    [approval] = completions(events, "authorise")
    assert approval["actor"] == "carol" and new(approval, "decision") == "approved"
    assert not [e for e in events if e["actor"] == "alice" and e["activityId"] == "authorise"
                and e["type"] != "task_created"]

    # alice is a genuine change authority: she may authorise a change somebody else raised
    other = raise_and_assess(api, "frank", SIGNIFICANT, "RFC-801")
    api.step(other, "authorise", "alice", {"decision": "approved"}, inbox=AUTHORITIES)
    assert api.open_keys(other) == ["schedule"]
    [approval] = completions(api.history(other), "authorise")
    assert approval["actor"] == "alice"
