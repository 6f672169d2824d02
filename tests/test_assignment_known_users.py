"""An assignee or candidate user taken from process data must be a user of the directory.

A ``camunda:assignee="${newManager}"`` whose variable holds a mistyped id used to give the task to a user nobody
can act as (only terminating the instance helped). The engine now drops unknown users from the assignment, keeps
the task with its candidate roles, and records ``assignment_ignored`` in the audit trail.
"""

from __future__ import annotations

BPMN = b"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="defs" targetNamespace="http://x">
  <bpmn:process id="handover" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="coordinate" name="Coordinate" camunda:candidateGroups="manager"
                   camunda:assignee="${lead}" camunda:candidateUsers="${helpers}">
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:endEvent id="end"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="coordinate"/>
    <bpmn:sequenceFlow id="f2" sourceRef="coordinate" targetRef="end"/>
  </bpmn:process>
</bpmn:definitions>
"""


def _start(engine, variables):
    engine.repository.deploy("handover", [("handover.bpmn", BPMN)])
    iid = engine.runtime.start("handover", variables=variables,
                               principal=engine.directory.get("rita").principal()).id
    [task] = engine.tasks.query(process_instance_id=iid)[0]
    return iid, task


def test_a_known_assignee_and_candidate_users_are_kept(engine):
    iid, task = _start(engine, {"lead": "mona", "helpers": ["wes"]})
    assert task.assignee == "mona" and task.candidate_users == ["wes"]
    assert not [e for e in engine.history.events(iid) if e.type == "assignment_ignored"]


def test_unknown_users_are_dropped_and_the_task_stays_with_its_role(engine):
    iid, task = _start(engine, {"lead": "nobody", "helpers": ["wes", "ghost"]})
    assert task.assignee is None and task.candidate_users == ["wes"] and task.candidate_roles == ["manager"]
    [event] = [e for e in engine.history.events(iid) if e.type == "assignment_ignored"]
    assert event.activity_id == "coordinate" and event.data["unknownUsers"] == ["nobody", "ghost"]
    # a manager can claim and complete it: nothing is stuck
    max_ = engine.directory.get("max").principal()
    engine.tasks.claim(task.id, max_)
    engine.tasks.complete(task.id, max_, {})
    assert engine.runtime.get(iid).state == "completed"
