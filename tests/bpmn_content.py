"""Constants shared by the pack content tests: namespaces, the contract's role ids, flow-node tags, shape sizes."""

NS = {
    "bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
    "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
    "dc": "http://www.omg.org/spec/DD/20100524/DC",
    "di": "http://www.omg.org/spec/DD/20100524/DI",
    "camunda": "http://camunda.org/schema/1.0/bpmn",
}
CAMUNDA = "{%s}" % NS["camunda"]

#: role ids fixed by the external contract (shared/reference/contract.md)
CONTRACT_ROLES = {
    "change-initiator", "change-manager", "change-authority", "cab-member", "change-builder",
    "independent-tester", "change-implementer", "configuration-manager", "service-desk", "incident-manager",
    "major-incident-manager", "problem-manager", "release-manager", "deployment-manager", "test-manager",
    "service-level-manager", "service-owner", "customer",
}
FLOW_NODES = ("startEvent", "endEvent", "intermediateThrowEvent", "intermediateCatchEvent", "boundaryEvent",
              "userTask", "scriptTask", "serviceTask", "sendTask", "receiveTask", "manualTask", "task",
              "exclusiveGateway", "parallelGateway", "inclusiveGateway", "eventBasedGateway", "callActivity",
              "subProcess")
SIZES = {"task": (100, 80), "event": (36, 36), "gateway": (50, 50)}
