"""The Camunda 7 Modeler dialect: what Camunda Modeler / bpmn.io write that the engine executes.

:func:`normalise` runs once per uploaded BPMN document and returns an *execution copy* of its tree
for SpiffWorkflow in which

- JUEL expressions (``${approved}``) of conditions (sequence flows, conditional events, multi-instance
  and loop conditions), timer values, message payload expressions (``camunda:expression``) and
  ``camunda:inputOutput`` parameters are replaced by the equivalent sandbox (Python) expression
  (:mod:`.juel`; anything outside the supported subset is a located deploy error);
- unquoted ISO 8601 timer values (``PT48H``, ``2025-01-01T09:00:00Z``, ``R3/PT10M``) become string
  literals (SpiffWorkflow evaluates a timer value as an expression);
- ``camunda:inputOutput`` with plain text or ``${…}`` parameters becomes input/output mappings run by
  the task spec (:class:`CamundaIoMixin`); lists, maps and scripts as parameters are refused.

The original tree (and the original bytes, which the API returns) are never modified; line numbers
are kept in the copy, and every problem is reported on the *original* element. Attributes the engine
does not use (``camunda:asyncBefore``, ``camunda:asyncAfter``, ``camunda:exclusive``, ``camunda:jobPriority``,
Zeebe/Modeler extensions…) are left alone: they change nothing in how this engine runs a process.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterator

from lxml import etree
from SpiffWorkflow.bpmn.serializer.default.task_spec import BpmnTaskSpecConverter, ScriptTaskConverter
from SpiffWorkflow.bpmn.specs.defaults import ManualTask, NoneTask, ScriptTask, ServiceTask
from SpiffWorkflow.camunda.serializer.task_spec import UserTaskConverter
from SpiffWorkflow.camunda.specs.user_task import UserTask

from . import juel
from . import metadata as md

__all__ = ["Dialect", "normalise", "IO_SPEC_CLASSES", "IO_SERIALIZER_CONFIG", "io_parameters"]

_C = md.CAMUNDA_NS
#: elements whose text is an expression the engine evaluates (relative to the owning flow node)
_CONDITION_PATHS = (
    ("sequenceFlow", "./bpmn:conditionExpression", "condition expression"),
    (None, "./bpmn:conditionalEventDefinition/bpmn:condition", "event condition"),
    (None, "./bpmn:multiInstanceLoopCharacteristics/bpmn:loopCardinality", "multi-instance loop cardinality"),
    (None, "./bpmn:multiInstanceLoopCharacteristics/bpmn:completionCondition", "multi-instance completion condition"),
    (None, "./bpmn:standardLoopCharacteristics/bpmn:loopCondition", "loop condition"),
    ("adHocSubProcess", "./bpmn:completionCondition", "ad-hoc completion condition"),
)


@dataclass
class Dialect:
    """The execution copy of one document, and the problems found translating it."""

    tree: etree._ElementTree
    #: (original element to report on, message)
    problems: list[tuple[etree._Element, str]] = field(default_factory=list)
    #: copy element -> original element
    original: dict[Any, Any] = field(default_factory=dict)
    #: original element -> copy element
    copied: dict[Any, Any] = field(default_factory=dict)
    #: copy elements (owners) with an expression that could not be translated: not checked again
    failed: set = field(default_factory=set)

    def translated(self, original_el) -> Any:
        return self.copied.get(original_el, original_el)


def _label(el) -> str:
    return f"{md.local(el)} '{el.get('id')}'" if el.get("id") else str(md.local(el))


def _owner(el):
    """The flow node / sequence flow an expression element belongs to (for messages and locations)."""
    node = el
    while node is not None and not (md.is_bpmn(node) and node.get("id") and
                                    (md.local(node) in md.FLOW_NODE_TAGS or md.local(node) == "sequenceFlow")):
        node = node.getparent()
    return node if node is not None else el


def _set_text(el, text: str) -> None:
    for child in list(el):
        el.remove(child)
    el.text = text


def normalise(tree: etree._ElementTree) -> Dialect:
    copy_tree = copy.deepcopy(tree)
    d = Dialect(copy_tree)
    for o, c in zip(tree.iter(), copy_tree.iter()):
        d.original[c] = o
        d.copied[o] = c
    root = tree.getroot()

    def translate(el, what: str, text: str) -> str | None:
        try:
            return juel.translate(text)
        except juel.JuelError as exc:
            owner = _owner(el)
            d.failed.add(d.copied[owner])
            d.failed.add(d.copied[el])
            d.problems.append((owner, f"{what} of {_label(owner)}: JUEL {text.strip()!r} is not supported: {exc}"))
            return None

    for el in root.iter():
        if not md.is_bpmn(el):
            continue
        name = md.local(el)
        # conditions
        for owner_tag, path, what in _CONDITION_PATHS:
            if owner_tag is not None and name != owner_tag:
                continue
            for cond in el.xpath(path, namespaces=md.NS):
                text = md.text_of(cond)
                if text is not None and text.lstrip().startswith("=") and not cond.get("language"):
                    owner = _owner(el)
                    d.failed.update((d.copied[owner], d.copied[el]))
                    d.problems.append((owner, f"{what} of {_label(owner)}: {text.strip()[:60]!r} is a FEEL expression "
                                              "(Camunda 8 / Zeebe); use ${...} (JUEL subset) or a Python expression"))
                    continue
                if not juel.is_juel(text, cond.get("language")):
                    continue
                py = translate(el, what, text or "")
                if py is not None:
                    target = d.copied[cond]
                    _set_text(target, py)
                    target.attrib.pop("language", None)
        # timers
        if name == "timerEventDefinition":
            for kind in md.TIMER_KINDS:
                t = el.find(md.q(kind))
                text = md.text_of(t)
                if t is None or text is None:
                    continue
                if juel.is_juel(text, t.get("language")):
                    py = translate(el.getparent(), f"timer {kind}", text)
                    if py is not None:
                        _set_text(d.copied[t], py)
                elif md.is_iso_timer_literal(kind, text):
                    _set_text(d.copied[t], repr(text.strip()))
        # message payload expressions
        if name == "messageEventDefinition" or name in ("sendTask",):
            expr = el.get(md.q("expression", _C))
            if expr and juel.is_juel(expr):
                py = translate(el, "message payload expression", expr)
                if py is not None:
                    d.copied[el].set(md.q("expression", _C), py)
        # input/output mappings, generated forms
        if name in md.FLOW_NODE_TAGS:
            _input_output(el, d, translate)
            _form_fields(el, d)
    return d


def _form_fields(node, d: Dialect) -> None:
    from itsmflow.engine.forms import formfield_problems

    fields = node.xpath("./bpmn:extensionElements/camunda:formData/camunda:formField", namespaces=md.NS)
    seen: set = set()
    for f, field in zip(fields, md.form_fields(node)):
        for problem in formfield_problems(field):
            d.problems.append((f, f"{_label(node)}: {problem}"))
        if field.get("id") in seen:
            d.problems.append((f, f"{_label(node)}: camunda:formField '{field.get('id')}' is defined twice"))
        seen.add(field.get("id"))


#: flow nodes whose camunda:inputOutput the engine runs (as the activity starts / completes)
IO_TAGS = {"userTask", "manualTask", "task", "scriptTask", "serviceTask"}


def _input_output(node, d: Dialect, translate) -> None:
    io = node.xpath("./bpmn:extensionElements/camunda:inputOutput", namespaces=md.NS)
    if not io:
        return
    if md.local(node) not in IO_TAGS:
        d.problems.append((io[0], f"{_label(node)}: camunda:inputOutput is supported on user, manual, script, "
                                  f"service tasks and tasks only, not on {md.local(node)}"))
        return
    if node.find(md.q("multiInstanceLoopCharacteristics")) is not None or \
            node.find(md.q("standardLoopCharacteristics")) is not None:
        d.problems.append((io[0], f"{_label(node)}: camunda:inputOutput on a looping or multi-instance "
                                  "activity is not supported"))
        return
    for param in io[0]:
        if not isinstance(param.tag, str):
            continue
        qn = etree.QName(param)
        if qn.namespace != _C or qn.localname not in ("inputParameter", "outputParameter"):
            d.problems.append((param, f"{_label(node)}: unexpected element {qn.localname} in camunda:inputOutput"))
            continue
        pname = param.get("name") or ""
        if not pname.isidentifier() or pname.startswith("_") or __import__("keyword").iskeyword(pname):
            d.problems.append((param, f"{_label(node)}: camunda:{qn.localname} name {pname!r} must be a variable "
                                      "name (an identifier not starting with _)"))
            continue
        children = [c for c in param if isinstance(c.tag, str)]
        if children:
            d.problems.append((param, f"{_label(node)}: camunda:{qn.localname} '{pname}': "
                                      f"{etree.QName(children[0]).localname} values are not supported "
                                      "(only text or one ${{...}} expression)"))
            continue
        text = param.text
        if text is None or not text.strip():
            py = "None"
        elif juel.is_juel(text):
            py = translate(param, f"camunda:{qn.localname} '{pname}'", text)
            if py is None:
                _set_text(d.copied[param], "None")
                continue
        else:
            py = repr(text)  # Camunda: plain text is a string constant
        _set_text(d.copied[param], py)


def io_parameters(node) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``([(name, python expression)], [...])`` inputs and outputs of a node of an execution copy."""
    inputs, outputs = [], []
    for param in node.xpath("./bpmn:extensionElements/camunda:inputOutput/*", namespaces=md.NS):
        if not isinstance(param.tag, str):
            continue
        kind = etree.QName(param).localname
        if kind in ("inputParameter", "outputParameter"):
            (inputs if kind == "inputParameter" else outputs).append((param.get("name"), param.text or "None"))
    return inputs, outputs


def iter_io_expressions(copy_node) -> Iterator[tuple[Any, str, str]]:
    for param in copy_node.xpath("./bpmn:extensionElements/camunda:inputOutput/*", namespaces=md.NS):
        if isinstance(param.tag, str) and param.text:
            yield param, f"camunda:{etree.QName(param).localname} '{param.get('name')}'", param.text


# -- execution of input/output mappings -------------------------------------------------------------------

class CamundaIoMixin:
    """Camunda 7 input/output mapping: input parameters are evaluated when the activity starts and
    visible to it only; output parameters are evaluated against the activity's data when it completes
    and set for the rest of the process. Expressions run in the workflow's (sandboxed) script engine."""

    io_inputs: list = []
    io_outputs: list = []

    def _update_hook(self, my_task):
        result = super()._update_hook(my_task)
        if self.io_inputs and not my_task._get_internal_data("io_inputs_done"):
            engine = my_task.workflow.script_engine
            values = [(name, engine.evaluate(my_task, expr)) for name, expr in self.io_inputs]
            # the process variables an input parameter shadows come back when the activity completes
            shadowed = {name: my_task.data[name] for name, _ in values if name in my_task.data}
            for name, value in values:
                my_task.data[name] = value
            my_task._set_internal_data(io_inputs_done=True, io_shadowed=shadowed)
        return result

    def _on_complete_hook(self, my_task):
        if self.io_inputs or self.io_outputs:
            engine = my_task.workflow.script_engine
            try:
                values = [(name, engine.evaluate(my_task, expr)) for name, expr in self.io_outputs]
            except Exception as exc:  # completing a user task: refused (422), nothing changes
                from itsmflow.engine.errors import FieldIssue, ValidationFailed

                detail = str(getattr(exc, "error", None) or exc)
                raise ValidationFailed(
                    f"camunda:outputParameter of {self.bpmn_id} cannot be evaluated: {detail}",
                    [FieldIssue("$", f"output mapping failed: {detail}")],
                ) from None
            outputs = {name for name, _ in self.io_outputs}
            shadowed = my_task._get_internal_data("io_shadowed") or {}
            for name, _ in self.io_inputs:
                if name in outputs:
                    continue
                if name in shadowed:
                    my_task.data[name] = shadowed[name]
                else:
                    my_task.data.pop(name, None)
            for name, value in values:
                my_task.data[name] = value
        super()._on_complete_hook(my_task)


def _io_class(base):
    return type(f"Io{base.__name__}", (CamundaIoMixin, base), {"__module__": __name__})


IoUserTask = _io_class(UserTask)
IoManualTask = _io_class(ManualTask)
IoNoneTask = _io_class(NoneTask)
IoScriptTask = _io_class(ScriptTask)
IoServiceTask = _io_class(ServiceTask)

#: plain spec class -> the class with input/output mapping
IO_SPEC_CLASSES = {UserTask: IoUserTask, ManualTask: IoManualTask, NoneTask: IoNoneTask,
                   ScriptTask: IoScriptTask, ServiceTask: IoServiceTask}


def _io_converter(base):
    class Converter(base):
        def to_dict(self, spec):
            dct = super().to_dict(spec)
            dct["io_inputs"] = [list(p) for p in spec.io_inputs]
            dct["io_outputs"] = [list(p) for p in spec.io_outputs]
            return dct

        def from_dict(self, dct):
            inputs = [tuple(p) for p in dct.pop("io_inputs", [])]
            outputs = [tuple(p) for p in dct.pop("io_outputs", [])]
            spec = super().from_dict(dct)
            spec.io_inputs, spec.io_outputs = inputs, outputs
            return spec

    Converter.__name__ = f"Io{base.__name__}"
    return Converter


#: serializer configuration for the classes above (added to parsing.SERIALIZER_CONFIG)
IO_SERIALIZER_CONFIG = {
    IoUserTask: _io_converter(UserTaskConverter),
    IoManualTask: _io_converter(BpmnTaskSpecConverter),
    IoNoneTask: _io_converter(BpmnTaskSpecConverter),
    IoScriptTask: _io_converter(ScriptTaskConverter),
    IoServiceTask: _io_converter(BpmnTaskSpecConverter),
}


class IoParserMixin:
    """SpiffWorkflow task parser mixin: nodes with ``camunda:inputOutput`` get the Io spec class."""

    def __init__(self, process_parser, spec_class, node, *args, **kwargs):
        inputs, outputs = io_parameters(node)
        if (inputs or outputs) and spec_class in IO_SPEC_CLASSES:
            spec_class = IO_SPEC_CLASSES[spec_class]
        super().__init__(process_parser, spec_class, node, *args, **kwargs)
        self._io = (inputs, outputs)

    def create_task(self):
        task = super().create_task()
        if isinstance(task, CamundaIoMixin):
            task.io_inputs, task.io_outputs = list(self._io[0]), list(self._io[1])
        return task
