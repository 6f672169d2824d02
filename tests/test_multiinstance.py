"""Multi-instance user tasks: the Camunda loop over a collection and ``itsmflow.collect``
(itsmflow/engine/multiinstance.py)."""

from __future__ import annotations


HEAD = b"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="d" targetNamespace="http://example.org/mi">
"""

CAMUNDA_LOOP = HEAD + b"""
  <bpmn:process id="review_loop" isExecutable="true">
    <bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="review"/>
    <bpmn:userTask id="review" name="Review" camunda:assignee="${reviewer}">
      <bpmn:extensionElements>
        <camunda:properties><camunda:property name="itsmflow.collect" value="findings"/></camunda:properties>
      </bpmn:extensionElements>
      <bpmn:multiInstanceLoopCharacteristics camunda:collection="reviewers" camunda:elementVariable="reviewer"/>
    </bpmn:userTask>
    <bpmn:sequenceFlow id="f2" sourceRef="review" targetRef="done"/>
    <bpmn:endEvent id="done"/>
  </bpmn:process>
</bpmn:definitions>
"""

def P(engine, user_id):
    return engine.directory.get(user_id).principal()


def _open(engine, iid):
    tasks, _ = engine.tasks.query(process_instance_id=iid)
    return tasks


def test_camunda_loop_keeps_its_input_collection_and_collects_each_submission(engine):
    engine.repository.deploy("mi", [("review_loop.bpmn", CAMUNDA_LOOP)])
    inst = engine.runtime.start("review_loop", variables={"reviewers": ["wes", "wanda"]},
                                principal=P(engine, "rita"))
    tasks = _open(engine, inst.id)
    assert sorted(t.assignee for t in tasks) == ["wanda", "wes"]
    for task in sorted(tasks, key=lambda t: t.assignee):
        engine.tasks.complete(task.id, P(engine, task.assignee), {"finding": f"ok from {task.assignee}"})
    final = engine.runtime.get(inst.id)
    assert final.state == "completed", final.incidents
    # the element variable is not written back over the input: the collection is still the reviewers' ids
    assert final.variables["reviewers"] == ["wes", "wanda"]
    assert [(f["completedBy"], f["finding"]) for f in final.variables["findings"]] == [
        ("wanda", "ok from wanda"), ("wes", "ok from wes")]
