"""Organisation tailoring of a pack (issue 9, docs/tailoring.md): ORG_DIR/tailoring.yaml merged over the pack
(policies, role mapping, renamed processes and tasks, disabled processes, replaced BPMN and forms, RACI and SoD
additions), every invalid tailoring refused with file, line and path, `itsmflow pack diff` (tailoring against
the pack, two pack versions), `pack apply` creating new versions only when something changed while running
instances keep theirs, and GET /api/packs showing the tailoring applied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from itsmflow.api.app import create_app
from itsmflow.cli import app as cli
from itsmflow.engine.core import Engine
from itsmflow.engine.directory import Directory
from itsmflow.engine.errors import Forbidden
from itsmflow.engine.packs import PackInvalid
from itsmflow.settings import REPO_ROOT, Settings

from .conftest import MINI_PACK

ISO_PACK = REPO_ROOT / "process_packs" / "iso20000"
EXAMPLE = ISO_PACK / "orgs" / "example"
NORTHWIND = ISO_PACK / "orgs" / "northwind"
TAILORING = "orgs/acme/tailoring.yaml"
runner = CliRunner()

# the mini pack's people, in Acme's role names (see ACME below)
ACME_DIRECTORY = {"users": [
    {"id": "root", "name": "Admin", "roles": ["admin"], "token": "t-root"},
    {"id": "ivan", "name": "Ivan", "roles": ["requester"], "token": "t-ivan"},
    {"id": "mike", "name": "Mike", "roles": ["coordinator"], "token": "t-mike"},
    {"id": "cora", "name": "Cora", "roles": ["cmdb"], "token": "t-cora"},
    {"id": "alma", "name": "Alma", "roles": ["approver"], "token": "t-alma"},
    {"id": "bob", "name": "Bob", "roles": ["developer"], "token": "t-bob"},
    {"id": "olga", "name": "Olga (still holds a pack role id)", "roles": ["change-builder"], "token": "t-olga"},
    {"id": "tess", "name": "Tess", "roles": ["qa"], "token": "t-tess"},
]}
ACME = """\
pack: mini
based_on: 1.0.0
roles:
  change-initiator: requester
  change-manager: coordinator
  change-authority: approver
  change-builder: developer
  independent-tester: qa
  configuration-manager: cmdb
policies:
  testing:
    min_testers: 2
processes:
  mini_change:
    title: Acme change
    tasks:
      build: Develop the change
      end_done: Change delivered
raci:
  mini_change:
    classify:
      consultation: advisory
"""


def H(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer t-{user}"}


def ok(resp, status: int = 200):
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.fixture
def pack(tmp_path) -> Path:
    """A private copy of the mini pack with an organisation 'acme' (tailoring + directory)."""
    target = tmp_path / "mini"
    shutil.copytree(MINI_PACK, target)
    org = target / "orgs" / "acme"
    org.mkdir(parents=True)
    (org / "tailoring.yaml").write_text(ACME)
    (org / "directory.yaml").write_text(yaml.safe_dump(ACME_DIRECTORY))
    return target


@pytest.fixture
def acme(settings):
    eng = Engine(settings, Directory.from_dict(ACME_DIRECTORY))
    yield eng
    eng.close()


def tailor(pack: Path, text: str) -> Path:
    path = pack / "orgs" / "acme" / "tailoring.yaml"
    path.write_text(text)
    return path


def refused(engine, pack: Path) -> list:
    with pytest.raises(PackInvalid) as exc:
        engine.packs.apply(pack, pack / "orgs" / "acme")
    assert engine.repository.definitions() == []  # nothing was deployed
    return exc.value.issues


# -- merge semantics ------------------------------------------------------------------------------------
def test_northwind_is_merged_over_the_pack(engine):
    base = engine.packs.load(ISO_PACK)
    nw = engine.packs.load(ISO_PACK, NORTHWIND)
    # policies: mappings merge key by key, lists are replaced; everything else stays the pack's
    authority = nw.rules["change_normal"].policies["change_authority"]
    assert authority["cost_thresholds"] == [{"above": 1000, "authority": "change-authority"},
                                            {"above": 5000, "authority": "cab"}]
    assert authority["levels"] == base.policies["change_authority"]["levels"]
    assert authority["by_category"] == base.policies["change_authority"]["by_category"]
    assert authority["defaults"] is False and base.policies["change_authority"]["defaults"] is True
    emergency = nw.policies["emergency"]
    assert emergency["review_deadline"] == "P2D"
    assert emergency["approval_deadline"] == base.policies["emergency"]["approval_deadline"]
    assert [w["reason"] for w in nw.policies["freeze_windows"]["windows"]][-1].startswith("Northwind peak")
    # every process gets the same tailored policies
    assert all(r.policies == nw.policies for r in nw.rules.values())

    # roles: the RACI speaks Northwind's names, the pack's keys stay
    rules = nw.rules["change_normal"]
    assert rules.raci["classify"].responsible == ("chg-coordinator",)
    assert rules.raci["classify"].consulted == ("cmdb-steward",)
    assert rules.raci["classify"].informed == ("requester",)
    assert rules.raci["cab_decision"].responsible == ("change-board",)
    assert rules.raci["cab_decision"].accountable == "chg-coordinator"
    assert rules.role_map["change-manager"] == "chg-coordinator"
    assert "change-manager" not in rules.roles and {"chg-coordinator", "security-officer"} <= set(rules.roles)
    # the replaced step: security review with its RACI, form and SoD rule
    assert rules.raci["security_review"].responsible == ("security-officer",)
    assert rules.raci["security_review"].accountable == "chg-coordinator"
    assert "change_security_review" in rules.forms and "costCentre" in rules.forms["change_rfc"]["schema"]["properties"]
    assert [r.id for r in rules.sod_rules("security_review")] == ["security-reviewer-not-initiator"]
    assert base.rules["change_normal"].raci.keys() <= rules.raci.keys()
    # names: the process and the renamed tasks carry Northwind's names; ids and other names are the pack's
    nw_model = nw.parsed.processes["change_normal"]
    assert nw_model.name == "Northwind request for change"
    assert nw_model.activities["classify"]["name"] == "Triage the RFC"
    assert nw_model.activities["build"]["name"] == base.parsed.processes["change_normal"].activities["build"]["name"]
    assert nw.parsed.processes["change_emergency"].activities["ecab_approval"]["name"] == "Urgent change board approval"
    # renaming touches only the name attributes: the emergency BPMN differs from the pack's in two lines
    old = dict(base.files)["change_emergency.bpmn"].decode().splitlines()
    new = dict(nw.files)["change_emergency.bpmn"].decode().splitlines()
    assert len(old) == len(new) and sum(a != b for a, b in zip(old, new)) == 2
    # the summary stored with the application
    t = nw.tailoring
    assert t["file"] == "orgs/northwind/tailoring.yaml" and len(t["sha256"]) == 64 and t["basedOn"] == "1.0.0"
    assert t["roles"]["change-authority"] == "change-approver" and t["extraRoles"] == ["security-officer"]
    assert t["policies"] == ["change_authority", "emergency", "freeze_windows"]
    assert t["processesReplaced"] == {"change_normal": "orgs/northwind/bpmn/change_normal.bpmn"}
    assert t["tasksRenamed"]["change_normal.classify"] == "Triage the RFC"
    assert t["processesRenamed"]["change_emergency"] == "Urgent change"
    assert t["raci"] == ["change_normal.security_review"] and t["sod"] == ["security-reviewer-not-initiator"]
    assert t["formsAdded"] == ["change_security_review"] and t["formsReplaced"] == ["change_rfc"]
    assert t["processesDisabled"] == []
    assert nw.notes == []  # written for this pack version, replaced BPMN made from the current file


def test_example_tailoring_changes_nothing(engine):
    base = engine.packs.load(ISO_PACK)
    example = engine.packs.load(ISO_PACK, EXAMPLE)
    assert {k: r.content_hash() for k, r in example.rules.items()} == \
        {k: r.content_hash() for k, r in base.rules.items()}
    assert dict(example.files) == dict(base.files)
    t = example.tailoring
    assert t["file"] == "orgs/example/tailoring.yaml" and t["roles"] == {} and t["policies"] == []
    assert not any(t[k] for k in ("processesRenamed", "tasksRenamed", "processesDisabled", "processesReplaced",
                                  "raci", "sod", "formsAdded", "formsReplaced"))


def test_disabled_process_is_not_deployed(engine, tmp_path):
    org = tmp_path / "nomajor"
    org.mkdir()
    (org / "tailoring.yaml").write_text("pack: iso20000\nprocesses:\n  major_incident:\n    disabled: true\n")
    result = engine.packs.apply(ISO_PACK, org)
    keys = {d.key for d in result.definitions}
    assert "major_incident" not in keys and {"incident", "change_normal", "problem"} <= keys
    assert "major_incident" not in {d.key for d in engine.repository.definitions()}
    assert result.tailoring["processesDisabled"] == ["major_incident"]
    # the interfaces with the disabled process are dropped, with a warning each
    dropped = [w for w in result.warnings if w.startswith("interface ")]
    assert len(dropped) == 3 and all("major_incident is disabled by the tailoring" in w for w in dropped)
    assert [p["tailoring"]["processesDisabled"] for p in (v.as_dict() for v in engine.packs.list())] == \
        [["major_incident"]]


# -- the role mapping at run time -----------------------------------------------------------------------
def test_org_users_hold_their_own_role_names(acme, pack):
    result = acme.packs.apply(pack, pack / "orgs" / "acme")
    assert result.warnings == ["olga holds pack role 'change-builder', which the tailoring maps to 'developer': "
                               "they get no 'change-builder' tasks under that name"]
    with TestClient(create_app(acme)) as c:
        start = ok(c.post("/api/process-definitions/key/mini_change/start", headers=H("ivan"),
                          json={"variables": {"summary": "Acme", "risk": "low"}}), 201)
        iid = start["id"]
        assert start["variables"]["policies"]["testing"] == {"required": True, "min_testers": 2}

        def task(key: str) -> dict:
            [t] = [t for t in ok(c.get("/api/tasks", headers=H("root"), params={"processInstanceId": iid}))
                   if t["taskDefinitionKey"] == key]
            return t

        classify = task("classify")
        assert classify["candidateRoles"] == ["coordinator"]  # RACI responsible, mapped
        assert [t["id"] for t in ok(c.get("/api/tasks", headers=H("mike"), params={"candidateUser": "mike"}))] == \
            [classify["id"]]
        assert ok(c.get("/api/tasks", headers=H("cora"), params={"candidateUser": "cora"})) == []
        # consultation is advisory for Acme (RACI override): no opinion needed
        ok(c.post(f"/api/tasks/{classify['id']}/complete", headers=H("mike"), json={"variables": {"category": "standard"}}))
        authorise = task("authorise")
        assert authorise["candidateRoles"] == ["approver"]
        assert c.post(f"/api/tasks/{authorise['id']}/claim", headers=H("mike")).status_code == 403
        ok(c.post(f"/api/tasks/{authorise['id']}/complete", headers=H("alma"), json={"variables": {"decision": "approved"}}))
        # 'build' has no RACI entry: its lane (pack role change-builder) is mapped at run time
        build = task("build")
        assert build["name"] == "Develop the change" and build["candidateRoles"] == ["developer"]
        assert c.post(f"/api/tasks/{build['id']}/claim", headers=H("olga")).status_code == 403
        ok(c.post(f"/api/tasks/{build['id']}/complete", headers=H("bob"), json={"variables": {"buildNotes": "ok"}}))
        test = task("test")
        assert test["candidateRoles"] == ["qa"]
        # the initiator (requester) is informed, in Acme's role name
        notes = ok(c.get("/api/notifications", headers=H("ivan")))
        assert any(n["type"] == "task_completed" and n["processInstanceId"] == iid for n in notes)
        definition = ok(c.get("/api/process-definitions/key/mini_change", headers=H("root")))
        assert definition["name"] == "Acme change"
        xml = c.get(f"/api/process-definitions/{definition['id']}/xml", headers=H("root")).text
        assert 'id="build" name="Develop the change"' in xml and 'name="Acme change"' in xml


# -- invalid tailoring: refused with file, line and path ------------------------------------------------
INVALID = [
    # (what, edit of ACME: old -> new, the line's needle, message)
    ("unknown pack role", ("  change-manager: coordinator", "  change-managr: coordinator"), "change-managr:",
     "unknown role 'change-managr': not a role of pack 'mini'"),
    ("unknown role in a RACI override", ("      consultation: advisory", "      consulted: [auditor]"), "[auditor]",
     "unknown role 'auditor' in consulted of task 'classify'"),
    ("policy value of the wrong type", ("    min_testers: 2", "    min_testers: two"), "min_testers: two",
     "policy 'testing': min_testers: 'two' is not of type 'integer' (schema policies/testing.schema.json)"),
    ("unknown policy", ("  testing:\n", "  testingg:\n"), "testingg:", "unknown policy 'testingg': pack 'mini' has testing"),
    ("renamed task that does not exist", ("      build: Develop", "      biuld: Develop"), "biuld:",
     "unknown task 'biuld': bpmn/mini_change.bpmn has no task or event with that id in process 'mini_change'"),
    ("RACI override of a task that does not exist", ("    classify:\n      consultation", "    clasify:\n      consultation"),
     "clasify:", "unknown task 'clasify': bpmn/mini_change.bpmn has no user task with that id in process 'mini_change' "
                 "(user tasks: authorise, build, classify, test)"),
    ("unknown process", ("processes:\n  mini_change:", "processes:\n  mini_chnage:"), "mini_chnage:",
     "unknown process 'mini_chnage': pack 'mini' has mini_change"),
    ("unknown key", ("based_on: 1.0.0", "based_on: 1.0.0\nrolez: {}"), "rolez:", "(top level): unknown key 'rolez'"),
    ("value of the wrong type in the tailoring itself", ("    title: Acme change", "    title: [Acme]"), "title: [Acme]",
     "processes.mini_change.title: ['Acme'] is not of type 'string'"),
    ("tailoring of another pack", ("pack: mini", "pack: iso20000"), "pack: iso20000",
     "this tailoring is for pack 'iso20000', not 'mini'"),
    ("missing forms directory", ("based_on: 1.0.0", "based_on: 1.0.0\nforms: acme-forms"), "forms: acme-forms",
     "forms directory not found: acme-forms"),
]


@pytest.mark.parametrize("what,edit,needle,message", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_tailoring_is_refused_with_its_location(engine, pack, what, edit, needle, message):
    assert edit[0] in ACME, edit
    path = tailor(pack, ACME.replace(edit[0], edit[1], 1))
    issues = refused(engine, pack)
    assert [(i.file, i.line) for i in issues] == [(TAILORING, line_of(path, needle))], [str(i) for i in issues]
    assert message in issues[0].message, str(issues[0])
    assert str(issues[0]).startswith(f"{TAILORING}:{line_of(path, needle)}:")


def test_replaced_bpmn_must_keep_the_process_key_and_task_ids(engine, pack):
    org = pack / "orgs" / "acme"
    (org / "bpmn").mkdir()
    source = (pack / "bpmn" / "mini_change.bpmn").read_text()
    replaced = org / "bpmn" / "acme_change.bpmn"
    text = ACME.replace("    title: Acme change", "    title: Acme change\n    bpmn: bpmn/acme_change.bpmn")
    path = tailor(pack, text)

    replaced.write_text(source.replace('id="mini_change"', 'id="acme_change"'))
    issues = refused(engine, pack)
    assert [(i.file, i.line) for i in issues] == [(TAILORING, line_of(path, "bpmn: bpmn/acme_change.bpmn"))]
    assert issues[0].message == ("orgs/acme/bpmn/acme_change.bpmn defines no executable process 'mini_change' (it "
                                 "defines: acme_change); a replaced BPMN keeps the pack's process key")

    # the task ids raci.yaml and sod.yaml name must stay
    replaced.write_text(source.replace('"test"', '"check"'))
    issues = refused(engine, pack)
    assert {(i.file, i.line) for i in issues} == {(TAILORING, line_of(path, "bpmn: bpmn/acme_change.bpmn"))}
    messages = sorted(i.message for i in issues)
    assert messages == [
        "orgs/acme/bpmn/acme_change.bpmn has no user task 'test' in process 'mini_change', which raci.yaml "
        "(processes.mini_change.tasks.test) names; a replaced BPMN keeps the pack's task ids",
        "orgs/acme/bpmn/acme_change.bpmn has no user task 'test' in process 'mini_change', which sod.yaml "
        "(rule 'builder-not-tester') names; a replaced BPMN keeps the pack's task ids",
    ]

    # a new task needs somebody responsible, located in the organisation's BPMN
    added = source.replace('<bpmn:sequenceFlow id="f5" sourceRef="test" targetRef="end_done"/>',
                           '<bpmn:sequenceFlow id="f5" sourceRef="test" targetRef="sign"/>\n'
                           '    <bpmn:userTask id="sign" name="Sign"/>\n'
                           '    <bpmn:sequenceFlow id="f6" sourceRef="sign" targetRef="end_done"/>')
    replaced.write_text(added)
    issues = refused(engine, pack)
    assert [(i.file, i.line) for i in issues] == [("orgs/acme/bpmn/acme_change.bpmn", line_of(replaced, 'id="sign"'))]
    assert "task 'sign' of process 'mini_change': nobody is responsible" in issues[0].message
    # ... given by the tailoring's RACI (an organisation role) it deploys, with the pack's process key
    tailor(pack, text + "    sign:\n      responsible: [signatory]\nextra_roles:\n  signatory: Signs changes off\n")
    result = engine.packs.apply(pack, org)
    assert [d.key for d in result.definitions] == ["mini_change"]
    rules = engine.packs.rules(result.definitions[0].id)
    assert rules.raci["sign"].responsible == ("signatory",)
    assert result.tailoring["processesReplaced"] == {"mini_change": "orgs/acme/bpmn/acme_change.bpmn"}


def test_replaced_form_must_be_a_valid_form(engine, pack):
    forms = pack / "orgs" / "acme" / "forms"
    forms.mkdir()
    (forms / "mini_build.json").write_text('{"type": "array"}')
    tailor(pack, ACME + "forms: forms\n")
    issues = refused(engine, pack)
    assert [(i.file, i.message) for i in issues] == [("orgs/acme/forms/mini_build.json",
                                                     'a form schema must have "type": "object"')]


# -- apply: new versions only when something changed; running instances keep theirs ------------------------
def test_apply_creates_versions_only_for_changes_and_instances_keep_theirs(acme, pack):
    org = pack / "orgs" / "acme"
    first = acme.packs.apply(pack, org)
    assert [(d.key, d.version) for d in first.definitions] == [("mini_change", 1)]
    assert first.new_versions == ["mini_change"]
    running = acme.runtime.start("mini_change", variables={"summary": "before", "risk": "low"})
    assert running.variables["policies"]["testing"]["min_testers"] == 2

    again = acme.packs.apply(pack, org)
    assert not again.created and again.new_versions == [] and again.definitions[0].version == 1

    # a policy value changes: new version; the running instance keeps version 1 and its values
    tailor(pack, ACME.replace("min_testers: 2", "min_testers: 3"))
    changed = acme.packs.apply(pack, org)
    assert changed.created and changed.new_versions == ["mini_change"] and changed.definitions[0].version == 2
    with TestClient(create_app(acme)) as c:
        body = ok(c.get(f"/api/process-instances/{running.id}", headers=H("root")))
        assert body["version"] == 1 and body["variables"]["policies"]["testing"]["min_testers"] == 2
        fresh = ok(c.post("/api/process-definitions/key/mini_change/start", headers=H("ivan"),
                          json={"variables": {"summary": "after", "risk": "low"}}), 201)
        assert fresh["version"] == 2 and fresh["variables"]["policies"]["testing"]["min_testers"] == 3
        # the running instance's tasks keep version 1's rules: classify needs no consultation (advisory)
        [classify] = [t for t in ok(c.get("/api/tasks", headers=H("root"), params={"processInstanceId": running.id}))]
        ok(c.post(f"/api/tasks/{classify['id']}/complete", headers=H("mike"), json={"variables": {"category": "major"}}))

        # GET /api/packs: the latest application for acme, with its tailoring
        [listed] = ok(c.get("/api/packs", headers=H("ivan")))
        assert (listed["name"], listed["version"], listed["organisation"]) == ("mini", "1.0.0", "acme")
        assert [(d["key"], d["version"]) for d in listed["definitions"]] == [("mini_change", 2)]
        t = listed["tailoring"]
        assert t["file"] == TAILORING and t["policies"] == ["testing"] and t["roles"]["change-builder"] == "developer"
        assert t["tasksRenamed"] == {"mini_change.build": "Develop the change", "mini_change.end_done": "Change delivered"}
        assert t["processesRenamed"] == {"mini_change": "Acme change"} and t["raci"] == ["mini_change.classify"]

    # without the organisation's tailoring, the pack as it is: another version, listed separately
    untailored = acme.packs.apply(pack, None)
    assert untailored.definitions[0].version == 3 and untailored.tailoring is None
    assert [(p.organisation, p.tailoring is None) for p in acme.packs.list()] == [(None, True), ("acme", False)]


def test_apply_is_admin_only(acme, pack):
    with pytest.raises(Forbidden):
        acme.packs.apply(pack, pack / "orgs" / "acme", principal=acme.directory.get("mike").principal())


def test_based_on_another_version_warns(engine, pack):
    tailor(pack, ACME.replace("based_on: 1.0.0", "based_on: 0.9.0"))
    result = engine.packs.apply(pack, pack / "orgs" / "acme")
    assert result.warnings[0] == ("orgs/acme/tailoring.yaml: written for pack version 0.9.0, applied to 1.0.0: "
                                  "review it (itsmflow pack diff --against)")


# -- the command line: apply and diff -------------------------------------------------------------------
def test_cli_pack_apply_with_tailoring(db_url):
    args = ["pack", "apply", str(ISO_PACK), "--db", db_url, "--org"]
    first = runner.invoke(cli, [*args, str(NORTHWIND)])
    assert first.exit_code == 0, first.output
    assert "tailoring orgs/northwind/tailoring.yaml (organisation northwind)" in first.output
    assert "change_normal version 1" in first.output and "new version" in first.output
    again = runner.invoke(cli, [*args, str(NORTHWIND)])
    assert again.exit_code == 0 and "unchanged: pack iso20000 1.0.0 was already applied" in again.output
    assert "new version" not in again.output
    # the example organisation: the pack's names and roles, so new versions of every process again
    example = runner.invoke(cli, [*args, str(EXAMPLE)])
    assert example.exit_code == 0 and "change_normal version 2" in example.output


def test_cli_pack_diff_shows_what_the_tailoring_changes():
    result = runner.invoke(cli, ["pack", "diff", str(ISO_PACK), "--org", str(NORTHWIND)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith(f"--- pack iso20000 1.0.0 ({ISO_PACK})\n+++ tailored for {NORTHWIND} "
                          "(orgs/northwind/tailoring.yaml)\n")
    for line in [
        "Roles (pack role -> organisation's role)",
        "  + change-manager -> chg-coordinator   (organisation's role name)",
        "  + organisation role security-officer: Reviews the information-security effect of changes before they "
        "are authorised",
        '  ~ change_normal: renamed "Normal change" -> "Northwind request for change" (key stays change_normal)',
        "  ~ change_normal: BPMN replaced: ../../bpmn/iso20000/change_normal.bpmn -> orgs/northwind/bpmn/change_normal.bpmn",
        '  ~ change_normal.classify: renamed "Classify RFC" -> "Triage the RFC"',
        "      --- ../../bpmn/iso20000/change_normal.bpmn (pack)",
        "      +++ orgs/northwind/bpmn/change_normal.bpmn (tailored)",
        '      +userTask security_review "Security review" [lane security-officer]',
        "  ~ change_authority.cost_thresholds[0].above: 10000 -> 1000",
        "  ~ change_authority.cost_thresholds[1].above: 100000 -> 5000",
        '  ~ emergency.review_deadline: "P3D" -> "P2D"',
        "  + change_normal.security_review: responsible security-officer; accountable change-manager; "
        "informed change-manager",
        "  + rule security-reviewer-not-initiator (change_normal: security_review not by initiator): Whoever raised "
        "a change may not carry out its security review.",
        "  + form change_security_review (added by the organisation)",
        "  ~ form change_rfc (replaced by the organisation):",
    ]:
        assert line in out.splitlines(), (line, out)
    # unchanged things are not listed
    assert "incident" not in out.split("Policies")[0].split("Processes")[1]

    example = runner.invoke(cli, ["pack", "diff", str(ISO_PACK), "--org", str(EXAMPLE)])
    assert example.exit_code == 0 and example.output.splitlines()[-1] == "no differences"


def test_cli_pack_diff_between_two_pack_versions(tmp_path, pack):
    newer = tmp_path / "mini-1.1"
    shutil.copytree(pack, newer)
    manifest = newer / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: 1.1.0"))
    (newer / "policies" / "testing.yaml").write_text("required: false\nmin_testers: 1\n")
    raci = newer / "raci.yaml"
    raci.write_text(raci.read_text().replace("        consultation: advisory\n", "        consultation: required\n"))
    bpmn = newer / "bpmn" / "mini_change.bpmn"
    bpmn.write_text(bpmn.read_text().replace('name="Test change"', 'name="Test the change"'))
    form = newer / "forms" / "mini_build.json"
    schema = json.loads(form.read_text())
    schema["properties"]["buildLog"] = {"type": "string"}
    form.write_text(json.dumps(schema))

    result = runner.invoke(cli, ["pack", "diff", str(newer), "--against", str(pack)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for line in [
        f"--- pack mini 1.0.0 ({pack})",
        f"+++ pack mini 1.1.0 ({newer})",
        "  ~ version: 1.0.0 -> 1.1.0",
        '  ~ mini_change.test: renamed "Test change" -> "Test the change"',
        "  ~ testing.required: true -> false",
        '  ~ mini_change.test.consultation: "advisory" -> "required"',
        "  ~ form mini_build:",
        "      --- mini_build schema (1.0.0)",
    ]:
        assert line in lines, (line, result.output)
    assert any(l.strip().startswith('+') and '"buildLog"' in l for l in lines), result.output

    # the same upgrade seen by an organisation: its tailoring applies on both sides
    tailored = runner.invoke(cli, ["pack", "diff", str(newer), "--against", str(pack), "--org", str(pack / "orgs" / "acme")])
    assert tailored.exit_code == 0, tailored.output
    assert "  ~ testing.required: true -> false" in tailored.output.splitlines()
    assert "min_testers" not in tailored.output  # Acme's own value (2) on both sides


def test_cli_pack_diff_refuses_invalid_tailoring_and_missing_arguments(pack):
    path = tailor(pack, ACME.replace("    min_testers: 2", "    min_testers: two"))
    result = runner.invoke(cli, ["pack", "diff", str(pack), "--org", str(pack / "orgs" / "acme")])
    assert result.exit_code == 1
    assert f"{TAILORING}:{line_of(path, 'min_testers: two')}:18: policy 'testing': min_testers: 'two' is not of " \
           "type 'integer'" in result.output
    nothing = runner.invoke(cli, ["pack", "diff", str(pack)])
    assert nothing.exit_code == 2 and "nothing to compare" in nothing.output


# -- serve: the organisation of the directory file --------------------------------------------------------
def test_serve_applies_the_tailoring_of_its_directory_org(db_url, tmp_path):
    from itsmflow.server import build_app, organisation_dir

    assert organisation_dir(Settings(directory=None)) == ISO_PACK / "orgs" / "example"
    assert organisation_dir(Settings(directory=NORTHWIND / "directory.yaml")) == NORTHWIND
    app = build_app(Settings(db=db_url, data_dir=tmp_path, directory=NORTHWIND / "directory.yaml", host="127.0.0.1"))
    engine = app.state.engine
    try:
        with TestClient(app) as c:
            [listed] = ok(c.get("/api/packs", headers={"Authorization": "Bearer demo-bruno"}))
            assert listed["organisation"] == "northwind" and listed["tailoring"]["file"] == "orgs/northwind/tailoring.yaml"
            assert {d["key"] for d in listed["definitions"]} >= {"change_normal", "change_emergency", "incident"}
            me = ok(c.get("/api/me", headers={"Authorization": "Bearer demo-bruno"}))
            assert me["roles"] == ["chg-coordinator"]
    finally:
        engine.close()
