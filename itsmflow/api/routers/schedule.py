"""Schedules of instances that occupy a time window: ``GET /api/schedule/{name}`` (``changes`` for the
ISO 20000 pack's schedule of changes). Which processes belong to a schedule is declared in their BPMN
(see :mod:`itsmflow.engine.schedule`)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from ...engine.schedule import parse_instant
from ..auth import PrincipalDep
from ..deps import EngineDep
from ..responses import problems

router = APIRouter(prefix="/schedule", tags=["schedule"])

DEFAULT_DAYS = 90


@router.get(
    "/{name}",
    summary="Entries of a schedule (e.g. the schedule of changes) overlapping a time range, with freeze windows",
    description=(
        "Running instances of the processes that declare schedule `name` whose window [plannedStart, plannedEnd) "
        "overlaps [`from`, `to`) and whose schedule state is set. The list is under the key "
        "named like the schedule (`changes` for `/api/schedule/changes`), each entry with `processInstanceId`, "
        "`businessKey`, `definitionKey`, `plannedStart`, `plannedEnd`, `state` (the process's schedule state, "
        "e.g. approved, scheduled, implemented), `summary`, `scope` (e.g. affected services) and "
        "`instanceState`, sorted by planned start. `freezeWindows` lists the freeze windows of the schedule's policy overlapping the "
        f"range. `from` defaults to now and `to` to {DEFAULT_DAYS} days after `from`; both are ISO 8601 dates "
        "or date-times (a time without offset is UTC). 422 when they do not parse or `to` is not after `from`."
    ),
    responses=problems(401, 404),
)
def get_schedule(
    engine: EngineDep,
    principal: PrincipalDep,
    name: Annotated[str, Path(description="schedule name, e.g. changes", max_length=255)],
    from_: Annotated[str | None, Query(alias="from", description="start of the range (ISO 8601)",
                                       max_length=64)] = None,
    to: Annotated[str | None, Query(description="end of the range (ISO 8601), exclusive", max_length=64)] = None,
) -> dict[str, Any]:
    start: Any = from_ if from_ is not None else datetime.now(timezone.utc)
    end: Any = to
    if end is None:
        parsed = parse_instant(start)
        try:
            end = (parsed + timedelta(days=DEFAULT_DAYS)) if parsed is not None else start
        except OverflowError:  # the range would end after the year 9999
            end = datetime.max.replace(tzinfo=timezone.utc)
    view = engine.schedules.view(name, start, end)
    return {
        "name": view.name,
        "from": view.start.isoformat(),
        "to": view.end.isoformat(),
        view.name: [e.as_dict() for e in view.entries],
        "freezeWindows": [w.as_dict() for w in view.freeze_windows],
    }
