"""Results of multi-instance user tasks.

A multi-instance user task (``bpmn:multiInstanceLoopCharacteristics``) creates one task per instance:
one vote per CAB member, one finding per reviewer. Each instance is a form submission whose fields follow
the pack's conventions (``decision``, ``reason``...), so the instances' results must be gathered
somewhere without every form naming a collection:

- ``camunda:properties`` on the task with ``itsmflow.collect = <variable>``: the engine appends each
  completed instance's submission, plus ``completedBy`` (the user who completed it), to the list
  ``<variable>`` of the multi-instance activity. The child being completed sees the updated list too, so
  a ``completionCondition`` can count the results so far (e.g. stop when a majority approved). Reset the
  variable to ``[]`` before the activity starts again (a new round).

``camunda:collection`` / ``camunda:elementVariable`` only say what the instances loop over: SpiffWorkflow's
Camunda dialect writes the element variable back into the same collection, so a submission never replaces
the element (as in Camunda, where the instances do not rewrite the input collection).

Without ``itsmflow.collect``, SpiffWorkflow merges each instance's data into the activity's data (unchanged here).
"""

from __future__ import annotations

import copy
from typing import Any

from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import MultiInstanceTask

COMPLETED_BY = "completedBy"
COLLECT_PROPERTY = "itsmflow.collect"


def collect_instance_result(definition: Any, spiff_task: Any, values: dict[str, Any], completed_by: str) -> None:
    """Record the result of one completed instance of a multi-instance task (see the module doc)."""
    parent = spiff_task.parent
    spec = getattr(parent, "task_spec", None)
    if not isinstance(spec, MultiInstanceTask):
        return
    collect = ((definition.activity(spiff_task.task_spec.bpmn_id) or {}).get("properties") or {}).get(COLLECT_PROPERTY)
    if collect:
        item = dict(values)
        item.setdefault(COMPLETED_BY, completed_by)
        results = list(parent.data.get(collect) or []) + [item]
        parent.data[collect] = results
        spiff_task.data[collect] = copy.deepcopy(results)

