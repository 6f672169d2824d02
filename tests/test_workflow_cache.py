"""The in-process workflow cache (Executor.workflows): a command reuses the workflow the previous
command of this process wrote, only when the instance row still has that version; a change made by
another process (another Engine on the same database) or a failed command makes it a miss."""

from __future__ import annotations

import pytest

from itsmflow.engine.core import Engine
from itsmflow.engine.errors import Conflict, ValidationFailed

from .conftest import fixture_bytes
from .test_engine_core import P, complete_by_key, open_tasks, walk_ten_steps

TEN = fixture_bytes("ten_steps.bpmn")


def test_consecutive_commands_reuse_the_workflow_and_give_the_same_result(engine, settings, directory):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    cached = engine.runtime.start("ten_steps", business_key="A")
    result = walk_ten_steps(engine, cached.id, amount=5, outcome="failed")
    assert engine.executor.workflows.hits > 0
    # the same walk without the cache (capacity 0: every command restores from the snapshot)
    other = Engine(settings, directory)
    other.executor.workflows.capacity = 0
    try:
        plain = other.runtime.start("ten_steps", business_key="B")
        expected = walk_ten_steps(other, plain.id, amount=5, outcome="failed")
        assert other.executor.workflows.hits == 0
    finally:
        other.close()
    assert result.process_instance.state == expected.process_instance.state == "completed"
    assert result.process_instance.variables == expected.process_instance.variables
    types = [e.type for e in engine.history.events(cached.id)]
    assert types == [e.type for e in engine.history.events(plain.id)]
    assert engine.history.verify(cached.id)[0].ok


def test_a_change_by_another_process_makes_the_cached_workflow_a_miss(engine, settings, directory):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    inst = engine.runtime.start("ten_steps")
    complete_by_key(engine, inst.id, "record", "rita", {"amount": 5})  # cached here at its version
    prepare_a = next(t for t in open_tasks(engine, inst.id) if t.task_definition_key == "prepare_a")
    second = Engine(settings, directory)  # another process on the same database
    try:
        second.tasks.complete(prepare_a.id, P(second, "wes"), {"part_a": "ready"})
    finally:
        second.close()
    misses = engine.executor.workflows.misses
    # the first process must not use its (older) workflow: prepare_a is done, prepare_b is not
    with pytest.raises(Conflict):
        engine.tasks.complete(prepare_a.id, P(engine, "wes"), {"part_a": "again"})
    assert engine.executor.workflows.misses > misses
    complete_by_key(engine, inst.id, "prepare_b", "wanda", {"part_b": "ready"})
    view = engine.runtime.get(inst.id)
    assert view.variables["part_a"] == "ready" and view.variables["part_b"] == "ready"
    assert [a["activityId"] for a in view.active_activities] == ["implement"]
    assert engine.history.verify(inst.id)[0].ok


def test_a_refused_command_leaves_no_half_changed_workflow_behind(engine):
    engine.repository.deploy("ten", [("ten_steps.bpmn", TEN)])
    inst = engine.runtime.start("ten_steps")
    task = open_tasks(engine, inst.id)[0]
    engine.tasks.complete(task.id, P(engine, "rita"), {"amount": 5})
    prepare_a = next(t for t in open_tasks(engine, inst.id) if t.task_definition_key == "prepare_a")
    with pytest.raises(ValidationFailed):
        engine.tasks.complete(prepare_a.id, P(engine, "wes"), {"bad": {1, 2}})
    # the refused command took the cached workflow and dropped it; the next one restores the snapshot
    result = engine.tasks.complete(prepare_a.id, P(engine, "wes"), {"part_a": "ready"})
    assert "bad" not in result.process_instance.variables
    assert sorted(t.task_definition_key for t in open_tasks(engine, inst.id)) == ["prepare_b"]
    assert engine.history.verify(inst.id)[0].ok
