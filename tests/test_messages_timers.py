"""Messages between instances, external correlation, signals, durable timers, event gateways."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import text

from itsmflow.engine.errors import NotFound

from .conftest import fixture_bytes


def P(engine, user_id):
    return engine.directory.get(user_id).principal()


def open_keys(engine, instance_id):
    return sorted(t.task_definition_key for t in engine.tasks.query(process_instance_id=instance_id)[0])


def complete(engine, instance_id, key, variables=None, user="root"):
    task = next(t for t in engine.tasks.query(process_instance_id=instance_id)[0] if t.task_definition_key == key)
    return engine.tasks.complete(task.id, _anyone(engine, user), variables or {})


def _anyone(engine, user):
    # tasks in these fixtures have no lanes: give the test user every candidate role it needs
    from itsmflow.engine.identity import Principal

    return Principal(user, frozenset({"admin"}))


def make_due(engine):
    with engine.db.begin() as conn:
        conn.execute(text("UPDATE job SET due_at = :t"), {"t": datetime(2000, 1, 1, tzinfo=timezone.utc)})


@pytest.fixture
def conversation(engine):
    engine.repository.deploy("conversation", [("conversation.bpmn", fixture_bytes("conversation.bpmn"))])
    return engine


def _unassigned_complete(engine, instance_id, key, variables):
    task = next(t for t in engine.tasks.query(process_instance_id=instance_id)[0] if t.task_definition_key == key)
    # no candidates are defined in the fixture: complete as a candidate by assigning first through the row
    with engine.db.begin() as conn:
        conn.execute(text("UPDATE human_task SET assignee = 'tester' WHERE id = :i"), {"i": task.id})
    from itsmflow.engine.identity import Principal

    return engine.tasks.complete(task.id, Principal("tester", frozenset()), variables)


def test_message_starts_the_other_pool_and_the_reply_is_correlated_by_payload_key(conversation):
    engine = conversation
    a1 = engine.runtime.start("requester", business_key="A-1").id
    a2 = engine.runtime.start("requester", business_key="A-2").id
    _unassigned_complete(engine, a1, "prepare", {"conversation_id": "C1", "question": "first?"})
    _unassigned_complete(engine, a2, "prepare", {"conversation_id": "C2", "question": "second?"})
    responders, n = engine.runtime.list(definition_key="responder")
    assert n == 2
    by_cid = {engine.runtime.get(r.id).variables["conversation_id"]: r.id for r in responders}
    assert set(by_cid) == {"C1", "C2"}
    assert engine.runtime.get(by_cid["C1"]).variables["question"] == "first?"
    # both requesters wait for their reply
    assert [a["activityId"] for a in engine.runtime.get(a1).active_activities] == ["catch_reply"]

    # answer the second conversation first: only A-2 moves on
    _unassigned_complete(engine, by_cid["C2"], "answer", {"answer": "two"})
    assert open_keys(engine, a2) == ["read_reply"] and open_keys(engine, a1) == []
    assert engine.runtime.get(a2).variables["answer"] == "two"
    _unassigned_complete(engine, by_cid["C1"], "answer", {"answer": "one"})
    assert open_keys(engine, a1) == ["read_reply"]
    assert engine.runtime.get(a1).variables["answer"] == "one"
    assert engine.runtime.get(by_cid["C1"]).state == "completed"
    types = [e.type for e in engine.history.events(a1)]
    assert "message_thrown" in types and "message_received" in types


def test_external_message_buffered_with_ttl_then_delivered_once(conversation):
    engine = conversation
    with pytest.raises(NotFound):
        engine.messages.correlate("reply", correlation_keys={"prop_cid": "C9"}, variables={"answer": "early"})
    first = engine.messages.correlate("reply", correlation_keys={"prop_cid": "C9"}, variables={"answer": "early"},
                                      message_id="m-1", ttl_seconds=60)
    assert first.buffered and not first.duplicate
    again = engine.messages.correlate("reply", correlation_keys={"prop_cid": "C9"}, variables={"answer": "early"},
                                      message_id="m-1", ttl_seconds=60)
    assert again.duplicate and again.buffered
    a = engine.runtime.start("requester", business_key="A-9").id
    _unassigned_complete(engine, a, "prepare", {"conversation_id": "C9"})
    # the request started a responder, and the buffered reply reached the requester
    assert open_keys(engine, a) == ["read_reply"]
    assert engine.runtime.get(a).variables["answer"] == "early"
    assert [e.type for e in engine.history.events(a)].count("buffered_message_delivered") == 1
    # a second requester with the same key gets nothing: the buffered message was consumed once
    b = engine.runtime.start("requester", business_key="A-10").id
    _unassigned_complete(engine, b, "prepare", {"conversation_id": "C9"})
    assert open_keys(engine, b) == []


def test_external_message_idempotent_by_message_id(engine):
    engine.repository.deploy("timers", [("timers.bpmn", fixture_bytes("timers.bpmn"))])
    inst = engine.runtime.start("racing", business_key="R-1").id
    r1 = engine.messages.correlate("go", business_key="R-1", variables={"why": "now"}, message_id="x-1")
    assert r1.correlated == [{"processInstanceId": inst, "activityId": "got_go"}] and not r1.duplicate
    r2 = engine.messages.correlate("go", business_key="R-1", variables={"why": "now"}, message_id="x-1")
    assert r2.duplicate and r2.correlated == r1.correlated
    assert [e.type for e in engine.history.events(inst)].count("message_received") == 1
    # event-based gateway: the message branch won, the timer branch is gone (no timer job left)
    assert open_keys(engine, inst) == ["on_message"]
    with engine.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM job WHERE instance_id = :i"), {"i": inst}).scalar() == 0


def test_event_based_gateway_timer_branch(engine):
    engine.repository.deploy("timers", [("timers.bpmn", fixture_bytes("timers.bpmn"))])
    inst = engine.runtime.start("racing", business_key="R-2").id
    make_due(engine)
    assert engine.jobs.run_due() == 1
    assert open_keys(engine, inst) == ["on_timeout"]
    with pytest.raises(NotFound):
        engine.messages.correlate("go", business_key="R-2")


def test_non_interrupting_boundary_timer_escalates_without_cancelling(engine):
    engine.repository.deploy("timers", [("timers.bpmn", fixture_bytes("timers.bpmn"))])
    inst = engine.runtime.start("escalating", variables={"escalate_after": "PT2H"}).id
    with engine.db.connect() as conn:
        due = conn.execute(text("SELECT due_at FROM job WHERE instance_id = :i"), {"i": inst}).scalar()
    due = due if isinstance(due, datetime) else datetime.fromisoformat(str(due))
    due = due if due.tzinfo else due.replace(tzinfo=timezone.utc)
    assert 7100 < (due - datetime.now(timezone.utc)).total_seconds() <= 7200
    assert engine.jobs.run_due() == 0  # not due yet
    make_due(engine)
    assert engine.jobs.run_due() == 1
    assert open_keys(engine, inst) == ["escalate", "work"]
    assert engine.jobs.run_due() == 0  # fired exactly once
    events = [e for e in engine.history.events(inst) if e.type == "timer_fired"]
    assert len(events) == 1 and events[0].activity_id == "sla_warning"


def test_intermediate_timer_fires_after_restart(settings, directory):
    from itsmflow.engine.core import Engine

    first = Engine(settings, directory)
    first.repository.deploy("timers", [("timers.bpmn", fixture_bytes("timers.bpmn"))])
    inst = first.runtime.start("waiting", variables={"wait": "PT1S"}).id
    first.close()
    # the server was down while the timer fell due; a new engine picks it up
    second = Engine(settings, directory)
    make_due(second)
    assert second.jobs.run_due() == 1
    view = second.runtime.get(inst)
    assert view.state == "completed" and view.variables["fired"] is True
    second.close()


def test_signal_reaches_every_waiting_instance(engine):
    engine.repository.deploy("timers", [("timers.bpmn", fixture_bytes("timers.bpmn"))])
    ids = [engine.runtime.start("alarmed").id for _ in range(3)]
    assert engine.messages.signal("alarm", {"level": "red"}) == 3
    for iid in ids:
        assert open_keys(engine, iid) == ["react"]
        assert engine.runtime.get(iid).variables["level"] == "red"
    assert engine.messages.signal("alarm") == 0


TWO_STARTS = b"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d" targetNamespace="x">
  <bpmn:message id="m" name="kick"/>
  <bpmn:process id="two_starts" isExecutable="true">
    <bpmn:startEvent id="plain"/>
    <bpmn:startEvent id="by_msg"><bpmn:messageEventDefinition messageRef="m"/></bpmn:startEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="plain" targetRef="work"/>
    <bpmn:sequenceFlow id="f2" sourceRef="by_msg" targetRef="work"/>
    <bpmn:userTask id="work"/>
    <bpmn:sequenceFlow id="f3" sourceRef="work" targetRef="e"/>
    <bpmn:endEvent id="e"/>
  </bpmn:process>
</bpmn:definitions>
"""


def test_message_start_next_to_a_none_start(engine):
    engine.repository.deploy("two", [("two.bpmn", TWO_STARTS)])
    plain = engine.runtime.start("two_starts").id
    assert open_keys(engine, plain) == ["work"]
    result = engine.messages.correlate("kick", business_key="K-1", variables={"origin": "message"})
    assert len(result.started) == 1
    started = engine.runtime.get(result.started[0])
    assert started.business_key == "K-1" and started.variables["origin"] == "message"
    assert open_keys(engine, started.id) == ["work"]
