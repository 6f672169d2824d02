"""Pack loading and deployment: the manifest schema, located errors (file and line) for RACI, SoD, forms,
policies and BPMN problems, idempotent application, policies given to every instance, GET /api/packs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from itsmflow.engine.core import Engine
from itsmflow.engine.packs import PackInvalid

from .conftest import MINI_ORG, MINI_PACK
from .packutil import H, drive_to, ok, task


@pytest.fixture
def pack(tmp_path) -> Path:
    """A private copy of the mini pack to break."""
    target = tmp_path / "mini"
    shutil.copytree(MINI_PACK, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def refused(engine, pack_dir) -> list:
    with pytest.raises(PackInvalid) as exc:
        engine.packs.apply(pack_dir, MINI_ORG)
    assert engine.repository.definitions() == []  # nothing was deployed
    return exc.value.issues


def test_mini_pack_applies_once_and_is_listed(mini_client, mini_engine):
    again = mini_engine.packs.apply(MINI_PACK, MINI_ORG)
    assert not again.created and [(d.key, d.version) for d in again.definitions] == [("mini_change", 1)]
    packs = ok(mini_client.get("/api/packs", headers=H("ivan")))
    assert [(p["name"], p["version"], p["organisation"], p["title"]) for p in packs] == [
        ("mini", "1.0.0", "example", "Mini change pack (tests)")]
    assert [(d["key"], d["version"]) for d in packs[0]["definitions"]] == [("mini_change", 1)]
    definition = ok(mini_client.get("/api/process-definitions/key/mini_change", headers=H("ivan")))
    assert packs[0]["definitions"][0]["id"] == definition["id"]


def test_policies_are_given_to_every_instance(settings, mini_directory, pack):
    engine = Engine(settings, mini_directory)
    try:
        engine.packs.apply(pack, MINI_ORG)
        inst = engine.runtime.start("mini_change", variables={"summary": "policy", "risk": "low"})
        assert inst.variables["policies"] == {"testing": {"required": True, "min_testers": 1}}
        started = engine.history.events(inst.id)[0]
        assert started.type == "process_started" and started.data["variables"]["policies"]["testing"]["required"]
        # the policy drives the gateway: without required testing, no test task
        edit(pack / "policies" / "testing.yaml", "required: true", "required: false")
        assert engine.packs.apply(pack, MINI_ORG).definitions[0].version == 2  # policies are part of the rules
    finally:
        engine.close()


def test_policy_off_skips_the_test_task(settings, mini_directory, pack):
    from fastapi.testclient import TestClient

    from itsmflow.api.app import create_app

    edit(pack / "policies" / "testing.yaml", "required: true", "required: false")
    engine = Engine(settings, mini_directory)
    try:
        engine.packs.apply(pack, MINI_ORG)
        with TestClient(create_app(engine)) as client:
            iid = drive_to(client, "build")
            ok(client.post(f"/api/tasks/{task(client, iid, 'build')['id']}/complete", headers=H("bob"),
                           json={"variables": {"buildNotes": "done"}}))
            assert ok(client.get(f"/api/process-instances/{iid}", headers=H("root")))["state"] == "completed"
            # nor may a task submit its own policies
            iid2 = drive_to(client, "build")
            resp = client.post(f"/api/tasks/{task(client, iid2, 'build')['id']}/complete", headers=H("bob"),
                               json={"variables": {"buildNotes": "x", "policies": {}}})
            assert resp.status_code == 422 and resp.json()["errors"][0]["path"] == "$.policies"
    finally:
        engine.close()


def test_unknown_raci_task_and_role_are_errors_with_file_and_line(engine, pack):
    raci = pack / "raci.yaml"
    edit(raci, "      authorise:", "      authorize:")
    edit(raci, "informed: [change-initiator, change-manager]", "informed: [change-initiator, change-managr]")
    edit(raci, "        accountable: change-manager", "        accountable: cab")
    issues = refused(engine, pack)
    found = {(i.file, i.line, i.message.split(":")[0]) for i in issues}
    assert ("raci.yaml", line_of(raci, "authorize:"), "unknown task 'authorize'") in found
    assert ("raci.yaml", line_of(raci, "accountable: cab"), "unknown role 'cab' in accountable of task 'test' "
                                                           "(not in the roles of pack.yaml)") in found
    msgs = [str(i) for i in issues]
    assert any("user tasks: authorise, build, classify, test" in m for m in msgs), msgs


def test_unknown_process_in_raci_and_schema_errors(engine, pack):
    raci = pack / "raci.yaml"
    edit(raci, "  mini_change:", "  mini_change:\n    tasks: {}\n  other_process:")
    issues = refused(engine, pack)
    assert [(i.file, i.line) for i in issues] == [("raci.yaml", line_of(raci, "other_process:"))]
    assert "unknown process 'other_process'" in issues[0].message

    edit(raci, "other_process:", "mini_change_dup:")
    raci.write_text(raci.read_text().replace("        signoff: true", "        signof: true"))
    issues = refused(engine, pack)
    assert any(i.line == line_of(raci, "signof: true") and "unknown key 'signof'" in i.message for i in issues)


def test_sod_errors_are_located(engine, pack):
    sod = pack / "sod.yaml"
    edit(sod, "not_same_as: [task:build]", "not_same_as: [task:biuld]")
    edit(sod, "tasks: [authorise]", "tasks: [approve]")
    issues = refused(engine, pack)
    assert {(i.file, i.line) for i in issues} == {("sod.yaml", line_of(sod, "task:biuld")),
                                                  ("sod.yaml", line_of(sod, "tasks: [approve]"))}
    assert any("unknown task 'biuld' in subject 'task:biuld'" in i.message for i in issues)


def test_manifest_is_validated_against_pack_schema(engine, pack):
    manifest = pack / "pack.yaml"
    edit(manifest, "raci: raci.yaml", "raci: raci.yaml\nracci: typo.yaml")
    edit(manifest, "version: 1.0.0", "version: ''")
    issues = refused(engine, pack)
    assert {(i.file, i.line) for i in issues} == {("pack.yaml", line_of(manifest, "racci:")),
                                                  ("pack.yaml", line_of(manifest, "version:"))}
    assert any("unknown key 'racci'" in i.message for i in issues)

    shutil.copy(MINI_PACK / "pack.yaml", manifest)
    edit(manifest, "bpmn: bpmn/mini_change.bpmn", "bpmn: bpmn/missing.bpmn")
    issues = refused(engine, pack)
    assert [(i.file, i.line, i.message) for i in issues] == [
        ("pack.yaml", line_of(manifest, "missing.bpmn"), "file not found: bpmn/missing.bpmn")]


def test_missing_form_and_nobody_responsible_point_into_the_bpmn(engine, pack):
    bpmn = pack / "bpmn" / "mini_change.bpmn"
    (pack / "forms" / "mini_build.json").unlink()
    edit(bpmn, '<bpmn:lane id="lane_builder" name="change-builder">', '<bpmn:lane id="lane_builder" name="Builders">')
    issues = refused(engine, pack)
    got = {(i.file, i.line, i.message) for i in issues}
    assert ("bpmn/mini_change.bpmn", line_of(bpmn, 'id="build"'),
            "user task 'build': form 'mini_build' is not in the pack's forms") in got
    # the lane name is no role id; its id is role-like (the runtime would use it) but not a role of the pack
    assert ("bpmn/mini_change.bpmn", line_of(bpmn, 'id="build"'),
            "task 'build': its lane 'lane_builder' is not a role of the pack (lanes are named by role id)") in got
    edit(bpmn, 'id="lane_builder"', 'id="Lane_Builder"')
    got = {(i.file, i.line, i.message) for i in refused(engine, pack)}
    assert ("bpmn/mini_change.bpmn", line_of(bpmn, 'id="build"'),
            "task 'build' of process 'mini_change': nobody is responsible (no RACI entry, no "
            "camunda:candidateGroups, no lane named by a role id)") in got


def test_invalid_policy_and_form_schema(engine, pack):
    policy = pack / "policies" / "testing.yaml"
    edit(policy, "min_testers: 1", "min_testers: zero")
    (pack / "forms" / "mini_build.json").write_text('{"type": "array"}')
    issues = refused(engine, pack)
    got = {(i.file, i.line): i.message for i in issues}
    assert "policy 'testing': min_testers: 'zero' is not of type 'integer'" in got[("policies/testing.yaml", 2)]
    assert got[("forms/mini_build.json", None)] == 'a form schema must have "type": "object"'


def test_bpmn_errors_keep_their_location(engine, pack):
    bpmn = pack / "bpmn" / "mini_change.bpmn"
    edit(bpmn, 'sourceRef="build" targetRef="gw_testing"', 'sourceRef="build" targetRef="nowhere"')
    issues = refused(engine, pack)
    assert issues and all(i.file == "bpmn/mini_change.bpmn" and i.line for i in issues)


def test_duplicate_yaml_keys_are_errors(engine, pack):
    raci = pack / "raci.yaml"
    edit(raci, "      authorise:\n", "      classify: {}\n      authorise:\n")
    issues = refused(engine, pack)
    assert [(i.file, i.line, i.message) for i in issues] == [
        ("raci.yaml", line_of(raci, "classify: {}"), "duplicate key 'classify'")]


def test_api_refuses_pack_apply_for_non_admins(mini_engine):
    from itsmflow.engine.errors import Forbidden

    with pytest.raises(Forbidden):
        mini_engine.packs.apply(MINI_PACK, MINI_ORG, principal=mini_engine.directory.get("ivan").principal())


def test_cli_pack_apply(db_url, pack):
    from typer.testing import CliRunner

    from itsmflow.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["pack", "apply", str(pack), "--org", str(MINI_ORG), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "mini_change version 1" in result.output
    edit(pack / "raci.yaml", "      authorise:", "      authorize:")
    result = runner.invoke(app, ["pack", "apply", str(pack), "--db", db_url])
    assert result.exit_code == 1
    assert f"raci.yaml:{line_of(pack / 'raci.yaml', 'authorize:')}:7: unknown task 'authorize'" in result.output


def test_apply_warns_about_roles_nobody_holds(engine, pack):
    directory = pack / "orgs" / "example" / "directory.yaml"
    directory.write_text(directory.read_text().replace("roles: [configuration-manager]", "roles: [customer]"))
    result = engine.packs.apply(pack, pack / "orgs" / "example")
    assert result.warnings == ["nobody in the directory holds role 'configuration-manager' "
                               "(needed by mini_change.classify)"]


def test_manifest_expects_and_service_tasks_are_checked(engine, pack):
    manifest = pack / "pack.yaml"
    edit(manifest, "raci: raci.yaml", "raci: raci.yaml\nservice_tasks: []\nexpects:\n  - message: change_done\n"
                                      "    from: [mini_change]\n    to: reporting (another pack)")
    issues = refused(engine, pack)
    assert [(i.file, i.line, i.message) for i in issues] == [
        ("pack.yaml", line_of(manifest, "from: [mini_change]"), "process 'mini_change' throws no message 'change_done'")]
    edit(manifest, "service_tasks: []", "service_tasks: [{type: http, description: calls a CMDB}]")
    issues = refused(engine, pack)
    assert [(i.file, i.line) for i in issues] == [("pack.yaml", line_of(manifest, "service_tasks:"))]
    assert "service_tasks: [{'type': 'http', 'description': 'calls a CMDB'}] is expected to be empty" in issues[0].message
