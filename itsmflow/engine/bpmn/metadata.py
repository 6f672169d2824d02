"""Extraction of engine metadata, structural checks and expression inventory from BPMN/DMN trees.

Everything here works on the hardened lxml trees only (no SpiffWorkflow involved).
"""

from __future__ import annotations

import re
from typing import Iterator

from lxml import etree

from itsmflow.engine.errors import SourceIssue

from .model import CollaborationModel, ProcessModel, TimerModel, UserTaskModel
from .xml import XmlDocument
from .xsd import BPMN_MODEL_NS

BPMN = BPMN_MODEL_NS
CAMUNDA_NS = "http://camunda.org/schema/1.0/bpmn"
NS = {"bpmn": BPMN, "camunda": CAMUNDA_NS}

FLOW_NODE_TAGS = {
    "task", "userTask", "manualTask", "scriptTask", "serviceTask", "sendTask", "receiveTask",
    "businessRuleTask", "callActivity", "subProcess", "transaction", "adHocSubProcess",
    "startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent",
    "exclusiveGateway", "inclusiveGateway", "parallelGateway", "eventBasedGateway", "complexGateway",
}
CONTAINER_TAGS = {"process", "subProcess", "transaction", "adHocSubProcess"}
CATCH_TAGS = {"startEvent", "intermediateCatchEvent", "boundaryEvent"}
THROW_TAGS = {"endEvent", "intermediateThrowEvent"}
EVENT_DEFINITIONS = {
    "timerEventDefinition": "timer",
    "messageEventDefinition": "message",
    "signalEventDefinition": "signal",
    "errorEventDefinition": "error",
    "escalationEventDefinition": "escalation",
    "terminateEventDefinition": "terminate",
    "conditionalEventDefinition": "conditional",
    "compensateEventDefinition": "compensate",
    "cancelEventDefinition": "cancel",
    "linkEventDefinition": "link",
}
TIMER_KINDS = ("timeDate", "timeDuration", "timeCycle")


def q(local: str, ns: str = BPMN) -> str:
    return "{%s}%s" % (ns, local)


def local(el: etree._Element) -> str | None:
    if not isinstance(el.tag, str):
        return None
    return etree.QName(el).localname


def is_bpmn(el: etree._Element, *names: str) -> bool:
    if not isinstance(el.tag, str):
        return False
    qn = etree.QName(el)
    return qn.namespace == BPMN and (not names or qn.localname in names)


def camunda(el: etree._Element, attr: str) -> str | None:
    return el.get(q(attr, CAMUNDA_NS))


def text_of(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    t = "".join(el.itertext())
    return t if t.strip() else None


def documentation(el: etree._Element) -> str | None:
    parts = [text_of(d) for d in el.findall(q("documentation"))]
    parts = [p.strip() for p in parts if p and p.strip()]
    return "\n".join(parts) or None


def split_list(value: str | None) -> list[str]:
    if not value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def extension_properties(el: etree._Element) -> dict[str, str | None]:
    props: dict[str, str | None] = {}
    for p in el.xpath("./bpmn:extensionElements/camunda:properties/camunda:property", namespaces=NS):
        name = p.get("name")
        if name is not None:
            props[name] = p.get("value")
    return props


def _strip_qname(ref: str | None) -> str | None:
    if ref and ":" in ref:
        return ref.split(":", 1)[1]
    return ref


def is_executable_flag(process_el: etree._Element) -> bool:
    """``isExecutable`` is an optional xs:boolean; a missing attribute means *not* executable
    (Camunda's rule; the MIWG reference files rely on it)."""
    return (process_el.get("isExecutable") or "").strip() in ("true", "1")


def enclosing_container(el: etree._Element) -> etree._Element | None:
    p = el.getparent()
    while p is not None and not is_bpmn(p, *CONTAINER_TAGS):
        p = p.getparent()
    return p


class DocumentIndex:
    """Names of messages / signals defined in the deployment (id -> name)."""

    def __init__(self, docs: list[XmlDocument]) -> None:
        self.messages: dict[str, str | None] = {}
        self.signals: dict[str, str | None] = {}
        for doc in docs:
            for m in doc.root.iter(q("message")):
                if m.get("id"):
                    self.messages.setdefault(m.get("id"), m.get("name"))
            for s in doc.root.iter(q("signal")):
                if s.get("id"):
                    self.signals.setdefault(s.get("id"), s.get("name"))

    def message_name(self, ref: str | None, fallback: str | None = None) -> str | None:
        if not ref:
            return fallback
        for key in (ref, _strip_qname(ref)):
            if key in self.messages:
                return self.messages[key] or key
        return ref

    def signal_name(self, ref: str | None, fallback: str | None = None) -> str | None:
        if not ref:
            return fallback
        for key in (ref, _strip_qname(ref)):
            if key in self.signals:
                return self.signals[key] or key
        return ref


def lane_map(process_el: etree._Element) -> tuple[dict[str, tuple[str | None, str | None]], dict[str, str | None]]:
    """flow node id -> (lane id, lane name) using the innermost lane; plus lane id -> name."""
    result: dict[str, tuple[str | None, str | None, int]] = {}
    lanes: dict[str, str | None] = {}
    for lane in process_el.iter(q("lane")):
        depth = sum(1 for a in lane.iterancestors(q("lane")))
        if lane.get("id"):
            lanes[lane.get("id")] = lane.get("name")
        for ref in lane.findall(q("flowNodeRef")):
            node_id = (ref.text or "").strip()
            if not node_id:
                continue
            prev = result.get(node_id)
            if prev is None or depth > prev[2]:
                result[node_id] = (lane.get("id"), lane.get("name"), depth)
    return {k: (v[0], v[1]) for k, v in result.items()}, lanes


def _lane_for(el: etree._Element, lanes: dict, process_el: etree._Element) -> tuple[str | None, str | None]:
    node = el
    while node is not None and node is not process_el:
        if node.get("id") in lanes:
            return lanes[node.get("id")]
        node = enclosing_container(node)
    return None, None


def form_fields(el: etree._Element) -> list[dict]:
    """``camunda:formData/camunda:formField`` of a user task or start event, as plain dicts."""
    return _form_fields(el)


def _form_fields(el: etree._Element) -> list[dict]:
    fields = []
    for f in el.xpath("./bpmn:extensionElements/camunda:formData/camunda:formField", namespaces=NS):
        field = {
            "id": f.get("id"),
            "label": f.get("label"),
            "type": f.get("type"),
            "default_value": f.get("defaultValue"),
        }
        values = [{"id": v.get("id"), "name": v.get("name")} for v in f.findall(q("value", CAMUNDA_NS))]
        if values:
            field["values"] = values
        validation = [
            {"name": c.get("name"), "config": c.get("config")}
            for c in f.xpath("./camunda:validation/camunda:constraint", namespaces=NS)
        ]
        if validation:
            field["validation"] = validation
        props = {p.get("id"): p.get("value") for p in f.xpath("./camunda:properties/camunda:property", namespaces=NS)}
        if props:
            field["properties"] = props
        fields.append(field)
    return fields


_ISO_CHARS = re.compile(r"[0-9A-Za-z:.,+\-/]{2,}")


def is_iso_timer_literal(kind: str | None, expression: str | None) -> bool:
    """True when ``expression`` is a bare ISO 8601 date / duration / repeating interval
    (Camunda style, e.g. ``PT5M``, ``2025-01-01T09:00:00Z``, ``R3/PT10M``), as opposed to a script
    expression that has to be evaluated (Spiff style, e.g. ``"PT5M"`` or ``due_date``)."""
    from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition as T

    if not expression or not kind:
        return False
    expr = expression.strip()
    if not _ISO_CHARS.fullmatch(expr):
        return False
    upper = expr.upper()
    try:
        if kind == "timeDuration":
            if not upper.startswith("P"):
                return False
            T.parse_iso_duration(expr)
            return True
        if kind == "timeDate":
            if upper.startswith("P"):
                return False
            T.parse_time_or_duration(expr)
            return True
        if kind == "timeCycle":
            if not upper.startswith("R"):
                return False
            T.parse_iso_recurring_interval(expr)
            return True
    except Exception:
        return False
    return False


def build_process_model(
    doc: XmlDocument, process_el: etree._Element, index: DocumentIndex, executable: bool
) -> ProcessModel:
    pid = process_el.get("id")
    lanes, lane_names = lane_map(process_el)
    model = ProcessModel(
        key=pid,
        name=process_el.get("name"),
        file=doc.name,
        is_executable=executable,
        documentation=documentation(process_el),
        version_tag=camunda(process_el, "versionTag"),
        candidate_starter_groups=split_list(camunda(process_el, "candidateStarterGroups")),
        candidate_starter_users=split_list(camunda(process_el, "candidateStarterUsers")),
        properties=extension_properties(process_el),
        lanes=lane_names,
    )
    caught_m, thrown_m, start_m = [], [], []
    caught_s, thrown_s, start_s = [], [], []

    def add(lst: list, value):
        if value and value not in lst:
            lst.append(value)

    for el in process_el.iter():
        name = local(el)
        if name is None or not is_bpmn(el) or name not in FLOW_NODE_TAGS:
            continue
        el_id = el.get("id")
        container = enclosing_container(el)
        parent = container.get("id") if container is not None and container is not process_el else None
        defs = [d for d in el if is_bpmn(d) and local(d) in EVENT_DEFINITIONS]
        kinds = [EVENT_DEFINITIONS[local(d)] for d in defs]
        event = None if not kinds else (kinds[0] if len(kinds) == 1 else "multiple")
        if el_id:
            retry = el.xpath("./bpmn:extensionElements/camunda:failedJobRetryTimeCycle/text()", namespaces=NS)
            model.activities[el_id] = {
                "name": el.get("name"), "type": name, "parent": parent, "event": event,
                # Camunda's per-activity retry policy, e.g. "R3/PT10S" (3 retries, 10 s apart)
                "retry_cycle": retry[0].strip() if retry else None,
                "properties": extension_properties(el),
            }

        for d in defs:
            kind = EVENT_DEFINITIONS[local(d)]
            if kind == "message":
                msg = index.message_name(d.get("messageRef"), el.get("name"))
                if name in CATCH_TAGS:
                    add(caught_m, msg)
                    if name == "startEvent" and parent is None:
                        add(start_m, msg)
                elif name in THROW_TAGS:
                    add(thrown_m, msg)
            elif kind == "signal":
                sig = index.signal_name(d.get("signalRef"), el.get("name"))
                if name in CATCH_TAGS:
                    add(caught_s, sig)
                    if name == "startEvent" and parent is None:
                        add(start_s, sig)
                elif name in THROW_TAGS:
                    add(thrown_s, sig)
            elif kind == "timer":
                tkind, expr = None, None
                for k in TIMER_KINDS:
                    t = d.find(q(k))
                    if t is not None:
                        tkind, expr = k, (t.text or "").strip() or None
                        break
                interrupting = None
                if name == "boundaryEvent":
                    interrupting = el.get("cancelActivity", "true") != "false"
                elif name == "startEvent" and parent is not None:
                    interrupting = el.get("isInterrupting", "true") != "false"
                model.timers.append(TimerModel(
                    element_id=el_id, element_type=name, kind=tkind, expression=expr,
                    literal=is_iso_timer_literal(tkind, expr),
                    is_start=name == "startEvent", attached_to=el.get("attachedToRef"),
                    interrupting=interrupting, parent=parent,
                ))

        if name == "receiveTask":
            add(caught_m, index.message_name(el.get("messageRef"), None))
        elif name == "sendTask":
            add(thrown_m, index.message_name(el.get("messageRef"), None))
        elif name == "startEvent" and parent is None and not defs:
            model.start_form_key = model.start_form_key or camunda(el, "formKey")
            model.start_initiator = model.start_initiator or camunda(el, "initiator")
            model.start_form_fields = model.start_form_fields or _form_fields(el)
        elif name == "callActivity":
            add(model.called_processes, el.get("calledElement"))
        elif name == "businessRuleTask":
            add(model.decisions, camunda(el, "decisionRef"))
        elif name == "userTask" and el_id:
            lane_id, lane_name = _lane_for(el, lanes, process_el)
            model.user_tasks[el_id] = UserTaskModel(
                id=el_id,
                name=el.get("name"),
                lane=lane_name,
                lane_id=lane_id,
                form_key=camunda(el, "formKey"),
                candidate_groups=split_list(camunda(el, "candidateGroups")),
                candidate_users=split_list(camunda(el, "candidateUsers")),
                assignee=camunda(el, "assignee"),
                due_date=camunda(el, "dueDate"),
                follow_up_date=camunda(el, "followUpDate"),
                priority=camunda(el, "priority"),
                documentation=documentation(el),
                properties=extension_properties(el),
                form_fields=_form_fields(el),
                parent=parent,
            )

    model.messages_caught, model.messages_thrown, model.start_messages = caught_m, thrown_m, start_m
    model.signals_caught, model.signals_thrown, model.start_signals = caught_s, thrown_s, start_s
    return model


def build_collaborations(doc: XmlDocument, index: DocumentIndex) -> list[CollaborationModel]:
    out = []
    for coll in doc.root.findall(q("collaboration")):
        model = CollaborationModel(id=coll.get("id"), name=coll.get("name"), file=doc.name)
        for p in coll.findall(q("participant")):
            model.participants.append({"id": p.get("id"), "name": p.get("name"), "process_ref": p.get("processRef")})
        for mf in coll.findall(q("messageFlow")):
            model.message_flows.append({
                "id": mf.get("id"),
                "name": mf.get("name"),
                "source_ref": mf.get("sourceRef"),
                "target_ref": mf.get("targetRef"),
                "message_ref": mf.get("messageRef"),
                "message_name": index.message_name(mf.get("messageRef"), None) if mf.get("messageRef") else None,
            })
        out.append(model)
    return out


# --- structural checks (collect every problem, unlike SpiffWorkflow which stops at the first) ---------

PYTHON_LANGUAGES = {"python", "python3", "py", "text/x-python", "text/python", "application/x-python"}
from .juel import JUEL_LANGUAGES  # noqa: E402  (language values that select JUEL)
RESERVED_IDS = {"Start", "End", "StartEventSplit", "StartEventJoin"}
RESERVED_SUFFIXES = (".EndJoin", ".BoundaryEventSplit", ".BoundaryEventJoin", " [child]")


def check_structure(doc: XmlDocument, process_el: etree._Element) -> list[SourceIssue]:
    issues: list[SourceIssue] = []
    for el in process_el.iter():
        if is_bpmn(el, *FLOW_NODE_TAGS):
            el_id = el.get("id")
            if el_id is None:
                issues.append(doc.issue(el, f"{local(el)} has no id"))
            elif el_id in RESERVED_IDS or el_id.endswith(RESERVED_SUFFIXES):
                issues.append(doc.issue(el, f"{local(el)} id '{el_id}' is reserved by the engine; rename the element"))
    for el in process_el.iter(q("scriptTask")):
        fmt = (el.get("scriptFormat") or "").strip()
        if fmt and fmt.lower() not in PYTHON_LANGUAGES and "python" not in fmt.lower():
            issues.append(doc.issue(el, f"scriptTask '{el.get('id')}': scriptFormat '{fmt}' is not supported (scripts are Python)"))
    for el in process_el.iter(q("conditionExpression")):
        lang = (el.get("language") or "").strip()
        if lang and lang.lower() not in PYTHON_LANGUAGES and "python" not in lang.lower() \
                and lang.lower() not in JUEL_LANGUAGES:
            owner = el.getparent()
            issues.append(doc.issue(owner, f"{local(owner)} '{owner.get('id')}': expression language '{lang}' is not supported (expressions are Python)"))
    containers = [process_el] + [e for e in process_el.iter() if e is not process_el and is_bpmn(e, *CONTAINER_TAGS)]
    for c in containers:
        kind = local(c)
        nodes = {e.get("id"): e for e in c if is_bpmn(e, *FLOW_NODE_TAGS) and e.get("id")}
        flows = [e for e in c if is_bpmn(e, "sequenceFlow")]
        outgoing: dict[str, list] = {}
        for f in flows:
            fid = f.get("id")
            for attr in ("sourceRef", "targetRef"):
                ref = f.get(attr)
                if ref not in nodes:
                    where = "does not exist" if doc.by_id(ref) is None else f"is not a flow node of {kind} '{c.get('id')}'"
                    issues.append(doc.issue(f, f"sequenceFlow '{fid}': {attr} '{ref}' {where}"))
            outgoing.setdefault(f.get("sourceRef"), []).append(f)
        for gid, gw in nodes.items():
            if not is_bpmn(gw, "exclusiveGateway", "inclusiveGateway"):
                continue
            outs = outgoing.get(gid, [])
            default = gw.get("default")
            if default and default not in {f.get("id") for f in outs}:
                issues.append(doc.issue(gw, f"{local(gw)} '{gid}': default flow '{default}' is not one of its outgoing sequence flows"))
            if len(outs) > 1:
                for f in outs:
                    cond = f.find(q("conditionExpression"))
                    if f.get("id") != default and (cond is None or text_of(cond) is None):
                        issues.append(doc.issue(
                            f,
                            f"sequenceFlow '{f.get('id')}' leaves {local(gw)} '{gid}' without a condition "
                            f"and is not the gateway's default flow",
                        ))
    return issues


# --- expressions evaluated at run time ----------------------------------------------------------------

def iter_process_expressions(process_el: etree._Element) -> Iterator[tuple[etree._Element, str, str]]:
    """(owning element, description, expression text) for every expression the engine evaluates."""
    for el in process_el.iter():
        if not is_bpmn(el):
            continue
        name = local(el)
        if name == "sequenceFlow":
            cond = el.find(q("conditionExpression"))
            t = text_of(cond)
            if t:
                yield el, "condition expression", t
        elif name == "scriptTask":
            t = text_of(el.find(q("script")))
            if t:
                yield el, "script", t
        elif name in FLOW_NODE_TAGS:
            for d in el:
                dn = local(d) if is_bpmn(d) else None
                if dn == "timerEventDefinition":
                    for k in TIMER_KINDS:
                        t = text_of(d.find(q(k)))
                        if t and not is_iso_timer_literal(k, t):
                            yield el, f"timer {k} expression", t.strip()
                elif dn == "conditionalEventDefinition":
                    t = text_of(d.find(q("condition")))
                    if t:
                        yield el, "event condition", t
                elif dn == "messageEventDefinition":
                    t = camunda(d, "expression")
                    if t and t.strip():
                        yield el, "message payload expression", t
            mi = el.find(q("multiInstanceLoopCharacteristics"))
            if mi is not None:
                for k, what in (("loopCardinality", "multi-instance loop cardinality"),
                                ("completionCondition", "multi-instance completion condition")):
                    t = text_of(mi.find(q(k)))
                    if t:
                        yield el, what, t
            sl = el.find(q("standardLoopCharacteristics"))
            if sl is not None:
                t = text_of(sl.find(q("loopCondition")))
                if t:
                    yield el, "loop condition", t
            if name == "adHocSubProcess":
                t = text_of(el.find(q("completionCondition")))
                if t:
                    yield el, "ad-hoc completion condition", t


def iter_correlation_expressions(root: etree._Element) -> Iterator[tuple[etree._Element, str, str]]:
    for cp in root.iter(q("correlationProperty")):
        for cpre in cp.findall(q("correlationPropertyRetrievalExpression")):
            for child in cpre:
                if is_bpmn(child, "messagePath", "formalExpression"):
                    t = text_of(child)
                    if t:
                        yield cp, "message correlation expression", t


def iter_dmn_expressions(root: etree._Element) -> Iterator[tuple[etree._Element, str, str]]:
    ns = etree.QName(root).namespace
    for inp in root.iter("{%s}input" % ns):
        ie = inp.find("{%s}inputExpression" % ns)
        t = text_of(ie.find("{%s}text" % ns)) if ie is not None else None
        if t:
            yield inp, "decision input expression", t
    for rule in root.iter("{%s}rule" % ns):
        for oe in rule.findall("{%s}outputEntry" % ns):
            t = text_of(oe.find("{%s}text" % ns))
            if t:
                yield oe, "decision output entry", t
