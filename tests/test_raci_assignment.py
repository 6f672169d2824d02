"""RACI → inboxes: every task of a pack lands in the inbox of exactly the users whose roles the RACI
names (lanes named by role id as the fallback; the accountable role during sign-off), and nobody else's.
The test enumerates tasks × users of the example organisation."""

from __future__ import annotations

import random

import pytest

from itsmflow.engine.core import Engine
from itsmflow.engine.directory import Directory
from itsmflow.engine.identity import Principal
from itsmflow.engine.raci import human_tasks
from itsmflow.settings import REPO_ROOT

from .conftest import MINI_ORG, MINI_PACK
from .packutil import H, drive_to, inbox_users, ok, task, walk

ISO_PACK = REPO_ROOT / "process_packs" / "iso20000"
WALKER = Principal("walker", frozenset(), "test walker")  # starts instances; holds no role
# values a random form filler cannot guess (they refer to the pack's policies or to users)
ISO_START_HINTS = {
    "change_preapproved": {"model": "std-application-access", "risk": "low",
                           "affectedCis": [{"ciId": "crm", "ciType": "application"}]},
    "release_deployment": {"releaseRef": "REL-2030-001", "releaseVersion": "1.0", "releaseType": "minor",
                           "ciType": "central_application", "deploymentApproach": "phased",
                           "deploymentMethod": "push", "plannedDeploymentStart": "2031-06-10T20:00:00Z",
                           "plannedDeploymentEnd": "2031-06-10T23:00:00Z"},
}
# release_deployment waits for the change approval (release_change_approved) before any human task
WAITS_FOR_MESSAGE_AT_START = {"release_deployment"}
ISO_TASK_HINTS = {
    "major_incident": {"take_charge": {"majorIncidentManager": "mike"}},
}


def test_every_task_lands_in_exactly_the_raci_inboxes(mini_engine):
    pack = mini_engine.packs.load(MINI_PACK)
    seen = walk(mini_engine, pack, "mini_change", starter=WALKER)
    by_task = {(k, phase): users for k, phase, users in seen}
    assert by_task == {
        ("classify", "work"): {"mike", "mona"},                 # RACI responsible: change-manager
        ("authorise", "work"): {"carl", "alma"},                # change-authority
        ("build", "work"): {"bob"},                             # no RACI entry: lane change-builder
        ("test", "work"): {"bob", "tess"},                      # RACI: independent-tester (string form)
        ("test", "signoff"): {"mike", "mona"},                  # accountable signs off
    }
    inst = mini_engine.runtime.list(definition_key="mini_change")[0][0]
    assert inst.state == "completed"


def test_candidate_roles_and_lane_fallback_over_http(mini_client, mini_engine):
    iid = drive_to(mini_client, "build")
    build = task(mini_client, iid, "build")
    assert build["candidateRoles"] == ["change-builder"] and build["lane"] == "change-builder"
    for user, visible in [("bob", True), ("tess", False), ("mike", False), ("root", False)]:
        inbox = ok(mini_client.get("/api/tasks", headers=H(user), params={"candidateUser": user}))
        assert (build["id"] in [t["id"] for t in inbox]) is visible, user
    # the RACI overrides the lane: authorise is in lane change-authority, classify's RACI says change-manager
    iid2 = drive_to(mini_client, "classify")
    assert task(mini_client, iid2, "classify")["candidateRoles"] == ["change-manager"]


def test_precedence_raci_then_candidate_groups_then_lane(settings, mini_directory, tmp_path):
    import shutil

    pack = tmp_path / "mini"
    shutil.copytree(MINI_PACK, pack)
    bpmn = pack / "bpmn" / "mini_change.bpmn"
    text = bpmn.read_text()
    text = text.replace('<bpmn:userTask id="classify" name="Classify change"',
                        '<bpmn:userTask id="classify" name="Classify change" camunda:candidateGroups="customer"')
    text = text.replace('<bpmn:userTask id="build" name="Build change"',
                        '<bpmn:userTask id="build" name="Build change" camunda:candidateGroups="independent-tester" '
                        'camunda:candidateUsers="cus"')
    bpmn.write_text(text)
    engine = Engine(settings, mini_directory)
    try:
        engine.packs.apply(pack, MINI_ORG)
        iid = engine.runtime.start("mini_change", variables={"summary": "precedence", "risk": "low"},
                                   principal=WALKER).id
        classify = engine.tasks.query(process_instance_id=iid)[0][0]
        assert classify.candidate_roles == ["change-manager"]  # RACI responsible beats candidateGroups
        cora = engine.directory.get("cora").principal()
        engine.consultations.record(classify.id, cora, "ok")
        engine.tasks.complete(classify.id, engine.directory.get("mike").principal(), {"category": "standard"})
        authorise = engine.tasks.query(process_instance_id=iid)[0][0]
        engine.tasks.complete(authorise.id, engine.directory.get("alma").principal(), {"decision": "approved"})
        build = engine.tasks.query(process_instance_id=iid)[0][0]
        # no RACI entry: candidateGroups beats the lane; candidateUsers are added
        assert (build.candidate_roles, build.candidate_users) == (["independent-tester"], ["cus"])
        assert inbox_users(engine, build) == {"bob", "tess", "cus"}
    finally:
        engine.close()


def test_changed_rules_make_a_new_version_and_running_instances_keep_theirs(settings, mini_directory, tmp_path):
    """A changed RACI makes a new definition version; an instance started before keeps the old rules."""
    import shutil

    pack = tmp_path / "mini"
    shutil.copytree(MINI_PACK, pack)
    engine = Engine(settings, mini_directory)
    try:
        first = engine.packs.apply(pack, MINI_ORG)
        iid = engine.runtime.start("mini_change", variables={"summary": "old rules", "risk": "low"},
                                   principal=WALKER).id
        raci = (pack / "raci.yaml").read_text().replace("responsible: [change-manager]",
                                                        "responsible: [change-authority]")
        (pack / "raci.yaml").write_text(raci)
        second = engine.packs.apply(pack, MINI_ORG)
        assert [d.version for d in first.definitions] == [1] and [d.version for d in second.definitions] == [2]
        assert second.created
        old = engine.tasks.query(process_instance_id=iid)[0][0]
        assert old.candidate_roles == ["change-manager"]
        new_iid = engine.runtime.start("mini_change", variables={"summary": "new rules", "risk": "low"},
                                       principal=WALKER).id
        new = engine.tasks.query(process_instance_id=new_iid)[0][0]
        assert new.candidate_roles == ["change-authority"]
        assert inbox_users(engine, new) == {"carl", "alma"} and inbox_users(engine, old) == {"mike", "mona"}
        # the same content again: nothing new
        assert not engine.packs.apply(pack, MINI_ORG).created
        assert [p.definitions[0]["version"] for p in engine.packs.list()] == [2]
    finally:
        engine.close()


@pytest.mark.skipif(not (ISO_PACK / "pack.yaml").is_file(), reason="the ISO 20000 pack has no manifest yet")
def test_iso_pack_tasks_land_in_exactly_the_raci_inboxes(settings):
    """The shipped pack with the example organisation: every task reached by walking each process."""
    directory = Directory.load(ISO_PACK / "orgs" / "example" / "directory.yaml")
    engine = Engine(settings, directory)
    try:
        engine.packs.apply(ISO_PACK, ISO_PACK / "orgs" / "example")
        pack = engine.packs.load(ISO_PACK)
        reached: dict[str, set[str]] = {}
        for key in [p.key for p in pack.processes]:
            for seed in (None, *range(1, 6)):  # the happy path, then random branches
                rng = random.Random(seed) if seed is not None else None
                seen = walk(engine, pack, key, starter=WALKER, rng=rng, start_hints=ISO_START_HINTS.get(key),
                            task_hints=ISO_TASK_HINTS.get(key))
                reached.setdefault(key, set()).update(t for t, _, _ in seen)
        for key, tasks in reached.items():
            has_tasks = bool(human_tasks(pack.parsed.processes[key].as_dict()))
            if key in WAITS_FOR_MESSAGE_AT_START:
                continue  # its first human task comes after a message from another process
            assert tasks or not has_tasks, f"no human task of {key} was reached"
            print(key, "tasks checked:", sorted(tasks))
    finally:
        engine.close()
