"""BPMN generated for the benchmarks (kept in code so sizes can be varied)."""

from __future__ import annotations

HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n'
        '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="bench_defs" targetNamespace="http://itsmflow/bench">\n')


def ten_user_tasks() -> bytes:
    """10 user tasks with an exclusive gateway, a parallel split/join and a script (lane 'bench')."""
    x = [HEAD, '<bpmn:process id="bench_ten" name="Bench ten" isExecutable="true">\n',
         '<bpmn:laneSet id="ls"><bpmn:lane id="lane_bench" name="bench">']
    nodes = ["start"] + [f"t{i}" for i in range(1, 11)] + ["score", "gw", "fork", "join", "merge", "end"]
    x += [f"<bpmn:flowNodeRef>{n}</bpmn:flowNodeRef>" for n in nodes]
    x.append("</bpmn:lane></bpmn:laneSet>\n")
    x.append('<bpmn:startEvent id="start"/>\n')
    for i in range(1, 11):
        x.append(f'<bpmn:userTask id="t{i}" name="Task {i}"/>\n')
    x.append('<bpmn:scriptTask id="score" name="Score" scriptFormat="python"><bpmn:script>'
             "score = amount * 2\npriority = 'high' if amount &gt; 100 else 'low'</bpmn:script></bpmn:scriptTask>\n")
    x.append('<bpmn:exclusiveGateway id="gw" name="Priority?" default="f_low"/>\n')
    x.append('<bpmn:exclusiveGateway id="merge"/>\n')
    x.append('<bpmn:parallelGateway id="fork"/><bpmn:parallelGateway id="join"/>\n<bpmn:endEvent id="end"/>\n')
    flows = [("start", "t1"), ("t1", "score"), ("score", "gw"), ("t2", "merge"), ("merge", "t3"), ("t3", "fork"),
             ("fork", "t4"), ("fork", "t5"), ("t4", "join"), ("t5", "join"), ("join", "t6"), ("t6", "t7"),
             ("t7", "t8"), ("t8", "t9"), ("t9", "t10"), ("t10", "end")]
    for i, (a, b) in enumerate(flows):
        x.append(f'<bpmn:sequenceFlow id="f{i}" sourceRef="{a}" targetRef="{b}"/>\n')
    x.append('<bpmn:sequenceFlow id="f_high" sourceRef="gw" targetRef="t2"><bpmn:conditionExpression '
             'xsi:type="bpmn:tFormalExpression">priority == \'high\'</bpmn:conditionExpression></bpmn:sequenceFlow>\n')
    x.append('<bpmn:sequenceFlow id="f_low" sourceRef="gw" targetRef="merge"/>\n')
    x.append("</bpmn:process>\n</bpmn:definitions>\n")
    return "".join(x).encode()


def sequential(n: int) -> bytes:
    """``n`` user tasks in a row."""
    x = [HEAD, f'<bpmn:process id="bench_seq_{n}" isExecutable="true">\n<bpmn:startEvent id="start"/>\n']
    prev = "start"
    for i in range(n):
        x.append(f'<bpmn:userTask id="s{i}" name="Step {i}" camunda:candidateGroups="bench"/>\n')
        x.append(f'<bpmn:sequenceFlow id="f{i}" sourceRef="{prev}" targetRef="s{i}"/>\n')
        prev = f"s{i}"
    x.append(f'<bpmn:endEvent id="end"/><bpmn:sequenceFlow id="fend" sourceRef="{prev}" targetRef="end"/>\n')
    x.append("</bpmn:process>\n</bpmn:definitions>\n")
    return "".join(x).encode()


def multi_instance() -> bytes:
    """One parallel multi-instance user task over ``items``."""
    return (HEAD + '<bpmn:process id="bench_mi" isExecutable="true">\n<bpmn:startEvent id="start"/>\n'
            '<bpmn:userTask id="each" name="Each item" camunda:candidateGroups="bench">'
            '<bpmn:multiInstanceLoopCharacteristics camunda:collection="items" camunda:elementVariable="item"/>'
            '</bpmn:userTask>\n<bpmn:endEvent id="end"/>\n'
            '<bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="each"/>'
            '<bpmn:sequenceFlow id="f2" sourceRef="each" targetRef="end"/>\n'
            "</bpmn:process>\n</bpmn:definitions>\n").encode()


def timer_wait() -> bytes:
    return (HEAD + '<bpmn:process id="bench_timer" isExecutable="true">\n<bpmn:startEvent id="start"/>\n'
            '<bpmn:intermediateCatchEvent id="wait"><bpmn:timerEventDefinition>'
            '<bpmn:timeDuration xsi:type="bpmn:tFormalExpression">"PT1H"</bpmn:timeDuration>'
            '</bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>\n<bpmn:endEvent id="end"/>\n'
            '<bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="wait"/>'
            '<bpmn:sequenceFlow id="f2" sourceRef="wait" targetRef="end"/>\n'
            "</bpmn:process>\n</bpmn:definitions>\n").encode()
