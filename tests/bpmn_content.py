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


def check_gateway(gw, flows) -> None:
    """The pack's gateway rules for one gateway element among its process's ``sequenceFlow`` elements: named;
    no gateway both merges and splits (bpmnlint no-gateway-join-fork, a merge gateway goes before it); an
    exclusive merge decides nothing; an exclusive decision names its flows, has a default flow and a condition
    on every other flow."""
    gid = gw.get("id")
    assert gw.get("name"), gid
    outs = [f for f in flows if f.get("sourceRef") == gid]
    ins = [f for f in flows if f.get("targetRef") == gid]
    assert len(ins) == 1 or len(outs) == 1, f"{gid} both merges and splits: put a merge gateway before it"
    if not gw.tag.endswith("}exclusiveGateway"):
        return
    if len(outs) == 1:  # a merge: joins alternative paths, decides nothing
        assert len(ins) >= 2 and gw.get("default") is None, gid
        assert outs[0].find("bpmn:conditionExpression", NS) is None, gid
        return
    assert len(outs) >= 2 and all(f.get("name") for f in outs), gid
    assert gw.get("default") in {f.get("id") for f in outs}, f"{gid} needs a default flow"
    for f in outs:
        if f.get("id") != gw.get("default"):
            assert f.find("bpmn:conditionExpression", NS) is not None, f.get("id")
