"""Engine core through the service layer: deploy/version, run, concurrency, audit, variables."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import text

from itsmflow.engine import snapshot
from itsmflow.engine.errors import Conflict, Forbidden, InvalidRequest, NotFound, ValidationFailed

from .conftest import fixture_bytes

TEN = fixture_bytes("ten_steps.bpmn")


def P(engine, user_id):
    return engine.directory.get(user_id).principal()


def open_tasks(engine, instance_id):
    tasks, _ = engine.tasks.query(process_instance_id=instance_id)
    return tasks


def complete_by_key(engine, instance_id, key, user, variables=None):
    task = next(t for t in open_tasks(engine, instance_id) if t.task_definition_key == key)
    return engine.tasks.complete(task.id, P(engine, user), variables or {})


def walk_ten_steps(engine, instance_id, *, amount, outcome):
    complete_by_key(engine, instance_id, "record", "rita", {"amount": amount})
    if amount > 1000:
        complete_by_key(engine, instance_id, "approve", "mona", {"decision": "approved"})
    complete_by_key(engine, instance_id, "prepare_a", "wes", {"part_a": "ready"})
    complete_by_key(engine, instance_id, "prepare_b", "wanda", {"part_b": "ready"})
    complete_by_key(engine, instance_id, "implement", "wes", {"outcome": outcome})
    if outcome != "successful":
        complete_by_key(engine, instance_id, "back_out", "wes", {})
    return complete_by_key(engine, instance_id, "review", "mona", {"reviewOutcome": "closed"})


def test_ten_step_process_runs_to_the_end(engine):
    dep = engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    assert [(d.key, d.version) for d in dep.definitions] == [("ten_steps", 1)]
    inst = engine.runtime.start("ten_steps", business_key="REQ-1", variables={"requester": "rita"},
                                principal=P(engine, "rita"))
    assert inst.state == "active"
    assert [a["activityId"] for a in inst.active_activities] == ["record"]
    tasks = open_tasks(engine, inst.id)
    assert [(t.task_definition_key, t.candidate_roles) for t in tasks] == [("record", ["requester"])]

    result = complete_by_key(engine, inst.id, "record", "rita", {"amount": 5000})
    # script + gateway ran; the high branch needs a manager (candidateGroups beats the lane)
    assert result.process_instance.variables["priority"] == "high"
    assert result.process_instance.variables["score"] == 10000
    assert result.next_tasks == []  # rita cannot work on the approval
    approve = open_tasks(engine, inst.id)[0]
    assert (approve.task_definition_key, approve.candidate_roles) == ("approve", ["manager"])

    complete_by_key(engine, inst.id, "approve", "mona", {"decision": "approved"})
    assert sorted(t.task_definition_key for t in open_tasks(engine, inst.id)) == ["prepare_a", "prepare_b"]
    complete_by_key(engine, inst.id, "prepare_a", "wes")
    complete_by_key(engine, inst.id, "prepare_b", "wanda")
    r = complete_by_key(engine, inst.id, "implement", "wes", {"outcome": "unsuccessful"})
    assert [t.task_definition_key for t in r.next_tasks] == ["back_out"]
    complete_by_key(engine, inst.id, "back_out", "wes")
    final = complete_by_key(engine, inst.id, "review", "mona", {"reviewOutcome": "closed"})
    assert final.process_instance.state == "completed"
    assert final.process_instance.active_activities == []
    assert open_tasks(engine, inst.id) == []

    done, total = engine.tasks.query(process_instance_id=inst.id, state="completed")
    assert total == 7
    assert {t.completed_by for t in done} == {"rita", "mona", "wes", "wanda"}

    events = engine.history.events(inst.id)
    types = [e.type for e in events]
    assert types[0] == "process_started" and types[-1] == "process_completed"
    assert types.count("task_completed") == 7
    score = next(e for e in events if e.type == "activity_completed" and e.activity_id == "score")
    assert score.data["changes"]["priority"] == {"old": None, "new": "high"}
    gw = next(e for e in events if e.activity_id == "gw_outcome")
    assert gw.data["taken"] == ["back_out"]
    approval = next(e for e in events if e.type == "task_completed" and e.activity_id == "approve")
    assert approval.actor == "mona" and approval.data["changes"]["decision"]["new"] == "approved"
    assert all(r.ok for r in engine.history.verify(inst.id))


def test_low_amount_takes_default_branch(engine):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    inst = engine.runtime.start("ten_steps")
    complete_by_key(engine, inst.id, "record", "rita", {"amount": 10})
    assert sorted(t.task_definition_key for t in open_tasks(engine, inst.id)) == ["prepare_a", "prepare_b"]


def test_same_bytes_same_version_changed_bytes_new_version(engine):
    first = engine.repository.deploy("a", [("ten_steps.bpmn", TEN)])
    inst_v1 = engine.runtime.start("ten_steps")
    again = engine.repository.deploy("b", [("ten_steps.bpmn", TEN)])
    assert again.created is False
    assert [(d.id, d.version) for d in again.definitions] == [(d.id, d.version) for d in first.definitions]

    changed = TEN.replace(b'name="Review"', b'name="Review outcome"')
    second = engine.repository.deploy("c", [("ten_steps.bpmn", changed)])
    assert second.created and second.definitions[0].version == 2
    assert engine.repository.xml(second.definitions[0].id) == changed
    assert engine.repository.xml(first.definitions[0].id) == TEN
    assert engine.repository.latest("ten_steps").version == 2
    assert len(engine.repository.definitions("ten_steps")) == 2
    assert [d.version for d in engine.repository.definitions(latest_only=True)] == [2]

    # the running instance stays on version 1; new ones use version 2
    assert engine.runtime.get(inst_v1.id).version == 1
    walk_ten_steps(engine, inst_v1.id, amount=1, outcome="successful")
    assert engine.runtime.get(inst_v1.id).state == "completed"
    assert engine.runtime.start("ten_steps").version == 2


def test_two_concurrent_completions_exactly_one_wins(engine):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    for round_ in range(3):
        inst = engine.runtime.start("ten_steps", business_key=f"RACE-{round_}")
        task = open_tasks(engine, inst.id)[0]
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def worker(amount):
            barrier.wait()
            try:
                engine.tasks.complete(task.id, P(engine, "rita"), {"amount": amount})
                outcomes.append("ok")
            except Conflict:
                outcomes.append("conflict")

        threads = [threading.Thread(target=worker, args=(a,)) for a in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["conflict", "ok"]
        # consistent: exactly one completion recorded, the next step opened once
        done, _ = engine.tasks.query(process_instance_id=inst.id, state="completed")
        assert [t.task_definition_key for t in done] == ["record"]
        assert sorted(t.task_definition_key for t in open_tasks(engine, inst.id)) == ["prepare_a", "prepare_b"]
        events = engine.history.events(inst.id)
        assert [e.type for e in events].count("task_completed") == 1
        assert all(r.ok for r in engine.history.verify(inst.id))


def test_claim_race_and_assignment_rules(engine):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    inst = engine.runtime.start("ten_steps")
    complete_by_key(engine, inst.id, "record", "rita", {"amount": 5000})
    task = open_tasks(engine, inst.id)[0]
    with pytest.raises(Forbidden):
        engine.tasks.claim(task.id, P(engine, "wes"))
    engine.tasks.claim(task.id, P(engine, "mona"))
    with pytest.raises(Conflict):
        engine.tasks.claim(task.id, P(engine, "max"))
    with pytest.raises(Conflict):
        engine.tasks.complete(task.id, P(engine, "max"), {})
    # mona's inbox shows it, max's does not (assigned to someone else)
    assert [t.id for t in engine.tasks.query(candidate_user="mona")[0]] == [task.id]
    assert engine.tasks.query(candidate_user="max")[0] == []
    engine.tasks.unclaim(task.id, P(engine, "mona"))
    assert [t.id for t in engine.tasks.query(candidate_user="max")[0]] == [task.id]
    # delegation keeps the owner accountable
    engine.tasks.claim(task.id, P(engine, "mona"))
    engine.tasks.delegate(task.id, "max", P(engine, "mona"))
    t = engine.tasks.get(task.id)
    assert (t.assignee, t.owner) == ("max", "mona")
    with pytest.raises(NotFound):
        engine.tasks.delegate(task.id, "nobody", P(engine, "max"))
    engine.tasks.complete(task.id, P(engine, "max"), {"decision": "approved"})
    completed = next(e for e in engine.history.events(inst.id) if e.type == "task_completed" and e.task_id == task.id)
    assert completed.actor == "max" and completed.data["owner"] == "mona"
    delegated = next(e for e in engine.history.events(inst.id) if e.type == "task_delegated")
    assert delegated.data == {"owner": "mona", "delegate": "max", "previousAssignee": "mona"}


def test_inbox_query_never_loads_instances(engine, monkeypatch):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    for i in range(5):
        engine.runtime.start("ten_steps", business_key=f"B-{i}")

    def forbidden(*_a, **_k):
        raise AssertionError("an inbox query deserialized an instance")

    monkeypatch.setattr(snapshot, "load", forbidden)
    tasks, total = engine.tasks.query(candidate_user="rita", page=1, size=2)
    assert total == 5 and len(tasks) == 2
    assert engine.tasks.query(candidate_role="requester", business_key="B-3")[1] == 1
    assert engine.tasks.query(candidate_user="wes")[1] == 0
    assert engine.runtime.list(definition_key="ten_steps", state="active")[1] == 5


def test_suspend_activate_terminate_and_business_key(engine):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    admin, rita = P(engine, "root"), P(engine, "rita")
    inst = engine.runtime.start("ten_steps", business_key="BK-1")
    with pytest.raises(Conflict):
        engine.runtime.start("ten_steps", business_key="BK-1")
    with pytest.raises(Forbidden):
        engine.runtime.suspend(inst.id, rita)
    engine.runtime.suspend(inst.id, admin)
    assert engine.runtime.get(inst.id).state == "suspended"
    task = open_tasks(engine, inst.id)[0]
    with pytest.raises(Conflict):
        engine.tasks.complete(task.id, rita, {"amount": 1})
    with pytest.raises(Conflict):
        engine.runtime.suspend(inst.id, admin)
    engine.runtime.activate(inst.id, admin)
    engine.tasks.complete(task.id, rita, {"amount": 1})
    with pytest.raises(InvalidRequest):
        engine.runtime.terminate(inst.id, admin, "")
    engine.runtime.terminate(inst.id, admin, "raised in error")
    view = engine.runtime.get(inst.id)
    assert (view.state, view.end_reason) == ("terminated", "raised in error")
    assert open_tasks(engine, inst.id) == []
    cancelled, n = engine.tasks.query(process_instance_id=inst.id, state="cancelled")
    assert n == 2
    with pytest.raises(Conflict):
        engine.runtime.terminate(inst.id, admin, "again")
    # the business key is free again once the instance has ended
    assert engine.runtime.start("ten_steps", business_key="BK-1").state == "active"
    types = [e.type for e in engine.history.events(inst.id)]
    assert ["process_suspended", "process_activated", "process_terminated"] == [
        t for t in types if t in ("process_suspended", "process_activated", "process_terminated")]
    with pytest.raises(NotFound):
        engine.runtime.get("no-such-instance")
    with pytest.raises(NotFound):
        engine.runtime.start("no_such_process")


def test_variables_round_trip_through_persistence(engine):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    when = datetime(2026, 11, 22, 10, 30, 15, 123456, tzinfo=timezone.utc)
    variables = {
        "when": when, "day": date(2026, 12, 24), "cost": Decimal("1234.5678"), "wait": timedelta(hours=5),
        "nested": {"list": [1, 2.5, "x", None, True, {"deep": [Decimal("0.1")]}]},
    }
    inst = engine.runtime.start("ten_steps", variables=variables)
    task = open_tasks(engine, inst.id)[0]
    engine.tasks.complete(task.id, P(engine, "rita"), {"amount": 3})
    _, _, wf = engine.executor.load_workflow(inst.id)
    data = next(t for t in wf.get_tasks() if t.task_spec.name == "prepare_a").data
    for key, value in variables.items():
        assert data[key] == value and type(data[key]) is type(value)
    assert type(data["nested"]["list"][5]["deep"][0]) is Decimal
    # the API view renders them as JSON
    view = engine.runtime.get(inst.id)
    assert view.variables["cost"] == "1234.5678" and view.variables["when"] == when.isoformat()


@pytest.mark.parametrize("bad", [{"s": {1, 2}}, {"o": object()}, {"f": float("nan")}, {"_private": 1},
                                 {"bytes": b"x"}, {"k": {1: "int key"}}])
def test_unsupported_variables_are_refused_before_anything_changes(engine, bad):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    with pytest.raises(ValidationFailed) as exc:
        engine.runtime.start("ten_steps", variables=bad)
    assert exc.value.errors and exc.value.errors[0].path.startswith("$")
    assert engine.runtime.list()[1] == 0
    inst = engine.runtime.start("ten_steps")
    task = open_tasks(engine, inst.id)[0]
    with pytest.raises(ValidationFailed):
        engine.tasks.complete(task.id, P(engine, "rita"), bad)
    assert engine.tasks.get(task.id).state == "open"


def test_tampering_with_the_audit_trail_is_detected(engine):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    inst = engine.runtime.start("ten_steps")
    walk_ten_steps(engine, inst.id, amount=5000, outcome="successful")
    assert engine.history.verify(inst.id)[0].ok
    with engine.db.begin() as conn:
        conn.execute(text(
            "UPDATE history_event SET data_json = :d WHERE scope = :s AND seq = 3"), {"d": '{"forged":true}', "s": inst.id})
    result = engine.history.verify(inst.id)[0]
    assert not result.ok and result.first_bad_seq == 3
    # repair that row, then remove the last event: truncation is detected as well
    with engine.db.begin() as conn:
        conn.execute(text("DELETE FROM history_event WHERE scope = :s AND seq >= 3"), {"s": inst.id})
    assert not engine.history.verify(inst.id)[0].ok
    assert engine.history.verify("repository")[0].ok


def test_failing_script_is_retried_then_becomes_an_incident_and_can_be_retried(engine):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    inst = engine.runtime.start("ten_steps")
    task = open_tasks(engine, inst.id)[0]
    # 'amount' missing: the script raises NameError inside the sandbox. The user's completion
    # still commits; the failed step is retried (default 3 times) before it becomes an incident.
    result = engine.tasks.complete(task.id, P(engine, "rita"), {"amount_typo": 5})
    assert result.process_instance.state == "active" and result.process_instance.incidents == []
    for _ in range(3):
        _make_jobs_due(engine)
        assert engine.jobs.run_due() == 1
    view = engine.runtime.get(inst.id)
    assert len(view.incidents) == 1 and view.incidents[0].activity_id == "score"
    assert "amount" in view.incidents[0].message
    types = [e.type for e in engine.history.events(inst.id)]
    assert types.count("step_failed") == 3 and types.count("step_retried") == 3
    assert types.count("incident_created") == 1
    # the engine keeps serving other instances
    assert engine.runtime.start("ten_steps").state == "active"
    # an operator fixes the data and retries: the script runs, the process moves on
    with pytest.raises(Forbidden):
        engine.incidents.retry(view.incidents[0].id, P(engine, "rita"), {"amount": 50})
    engine.incidents.retry(view.incidents[0].id, P(engine, "root"), {"amount": 50})
    after = engine.runtime.get(inst.id)
    assert after.incidents == [] and after.variables["priority"] == "low"
    assert sorted(t.task_definition_key for t in open_tasks(engine, inst.id)) == ["prepare_a", "prepare_b"]
    with pytest.raises(Conflict):
        engine.incidents.retry(view.incidents[0].id, P(engine, "root"))


def _make_jobs_due(engine):
    with engine.db.begin() as conn:
        conn.execute(text("UPDATE job SET due_at = :t"), {"t": datetime(2000, 1, 1, tzinfo=timezone.utc)})


def test_work_per_step_does_not_depend_on_the_number_of_instances(engine):
    """Statements and rows touched by one completion are the same with 1 or 60 running instances."""
    from sqlalchemy import event

    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])

    def measured_step(business_key):
        inst = engine.runtime.start("ten_steps", business_key=business_key)
        task = open_tasks(engine, inst.id)[0]
        statements: list[str] = []

        def count(conn, cursor, statement, params, context, executemany):
            statements.append(statement.split()[0].upper())

        event.listen(engine.db, "before_cursor_execute", count)
        try:
            engine.tasks.complete(task.id, P(engine, "rita"), {"amount": 5})
        finally:
            event.remove(engine.db, "before_cursor_execute", count)
        return statements

    few = measured_step("first")
    for i in range(60):
        engine.runtime.start("ten_steps", business_key=f"filler-{i}")
    many = measured_step("last")
    assert sorted(few) == sorted(many)
