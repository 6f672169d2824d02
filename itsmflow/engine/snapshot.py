"""Instance snapshots: SpiffWorkflow state serialized *without* the process spec.

The spec of a definition version is stored once (``process_definition.spec_json``) and cached
in memory; a snapshot holds only the task tree and data, so its size and cost do not depend on
the size of the process model.
"""

from __future__ import annotations

import json
import threading
from datetime import date
from decimal import Decimal
from uuid import UUID

from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.serializer.default.workflow import WorkflowConverter
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow

from .bpmn.parsing import SERIALIZER_CONFIG, spec_from_json, spec_to_json

_local = threading.local()


def _register_value_types(registry) -> None:  # noqa: ANN001
    registry.register(Decimal, lambda v: {"value": str(v)}, lambda v: Decimal(v["value"]), typename="Decimal")
    registry.register(date, lambda v: {"value": v.isoformat()}, lambda v: date.fromisoformat(v["value"]), typename="date")


def serializer() -> BpmnWorkflowSerializer:
    """A serializer per thread: SpiffWorkflow's registry toggles internal state while encoding."""
    s = getattr(_local, "serializer", None)
    if s is None:
        registry = BpmnWorkflowSerializer.configure(SERIALIZER_CONFIG)
        _register_value_types(registry)
        s = BpmnWorkflowSerializer(registry)
        _local.serializer = s
    return s


def _workflow_converter(s: BpmnWorkflowSerializer):  # noqa: ANN202
    return s.registry.convert_to_dict[s.registry.typenames[BpmnWorkflow]].args[1].__self__


def dump(workflow: BpmnWorkflow) -> str:
    """Serialize an instance's state (task tree, data, subprocesses, pending events) to JSON."""
    s = serializer()
    conv = _workflow_converter(s)
    s.registry._encoder_mode = True
    try:
        dct = WorkflowConverter.to_dict(conv, workflow)
        dct["subprocesses"] = conv.mapping_to_dict(workflow.subprocesses)
        dct["bpmn_events"] = s.registry.convert(workflow.bpmn_events)
        dct[s.VERSION_KEY] = s.VERSION
        try:
            # the converted dict is plain JSON data as a rule: the C encoder without a Python
            # ``default`` hook is about twice as fast on large trees (same output)
            return json.dumps(dct, separators=(",", ":"))
        except (TypeError, ValueError):
            return json.dumps(dct, cls=s._encoder_cls, separators=(",", ":"))
    finally:
        s.registry._encoder_mode = False


def load(snapshot: str, spec, subprocess_specs: dict, script_engine) -> BpmnWorkflow:  # noqa: ANN001
    """Rebuild a workflow from a snapshot and the (cached, shared, read-only) spec objects."""
    s = serializer()
    conv = _workflow_converter(s)
    dct = json.loads(snapshot)
    dct.pop(s.VERSION_KEY, None)
    workflow = BpmnWorkflow(spec, subprocess_specs, script_engine=script_engine, deserializing=True)
    workflow.tasks = conv.mapping_from_dict(dct["tasks"], UUID, workflow=workflow)
    workflow.task_tree = workflow.tasks.get(UUID(dct["root"]))
    conv.set_default_attributes(workflow, dct)
    conv.subprocesses_from_dict(dct["subprocesses"], workflow)
    workflow.bpmn_events = s.registry.restore(dct.pop("bpmn_events", []))
    return workflow


def dump_spec(spec, subprocess_specs: dict) -> str:  # noqa: ANN001
    return spec_to_json(spec, subprocess_specs)


def load_spec(spec_json: str):  # noqa: ANN201
    return spec_from_json(spec_json)
