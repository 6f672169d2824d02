"""``python -m bench long``: time per step along a 200-step sequential process and along a
1,000-item multi-instance task. Flat means the cost of a step does not grow with the instance's
history. The same walks are timed on raw SpiffWorkflow in the same run: its own per-step work
(walking the task tree) grows with the tree, so part of any growth is the interpreter's."""

from __future__ import annotations

import time
from typing import Any

from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState

from itsmflow.engine.bpmn import parse_deployment
from itsmflow.engine.core import Engine

from . import processes
from .common import DIRECTORY, database, pg_available, settings, table


def _walk(engine: Engine, key: str, variables: dict[str, Any], limit: int) -> list[float]:
    user = DIRECTORY.get("u2").principal()
    inst = engine.runtime.start(key, variables=variables)
    times = []
    for _ in range(limit):
        tasks, _ = engine.tasks.query(process_instance_id=inst.id, size=1)
        if not tasks:
            break
        t0 = time.perf_counter()
        engine.tasks.complete(tasks[0].id, user, {})
        times.append(time.perf_counter() - t0)
    return times


def _walk_raw(xml: bytes, key: str, variables: dict[str, Any], limit: int) -> list[float]:
    """The same walk on SpiffWorkflow in memory: find a READY user task, run it, run engine steps."""
    parsed = parse_deployment([("p.bpmn", xml)])
    wf = BpmnWorkflow(parsed.specs[key], parsed.subprocess_specs[key])
    start = wf.get_next_task(state=TaskState.READY)
    start.data.update(variables)
    wf.do_engine_steps()
    times = []
    for _ in range(limit):
        t0 = time.perf_counter()
        task = wf.get_next_task(state=TaskState.READY, manual=True)
        if task is None:
            break
        task.run()
        wf.do_engine_steps()
        times.append(time.perf_counter() - t0)
    return times


def _summary(times: list[float]) -> dict[str, Any]:
    k = max(1, len(times) // 10)
    first, last = sum(times[:k]) / k, sum(times[-k:]) / k
    return {"steps": len(times), "first_10pct_ms": round(first * 1000, 3), "last_10pct_ms": round(last * 1000, 3),
            "growth": round(last / first, 2), "total_s": round(sum(times), 2)}


def main(quick: bool = False) -> dict[str, Any]:
    n_seq, n_mi = (50, 100) if quick else (200, 1000)
    seq_xml, mi_xml = processes.sequential(n_seq), processes.multi_instance()
    out: dict[str, Any] = {"raw": {
        "sequential": _summary(_walk_raw(seq_xml, f"bench_seq_{n_seq}", {}, n_seq)),
        "multi_instance": _summary(_walk_raw(mi_xml, "bench_mi", {"items": list(range(n_mi))}, n_mi)),
    }}
    rows = [[f"raw SpiffWorkflow: sequential {n_seq}", *_cells(out["raw"]["sequential"])],
            [f"raw SpiffWorkflow: multi-instance {n_mi}", *_cells(out["raw"]["multi_instance"])]]
    for kind in ["sqlite"] + (["postgresql"] if pg_available() and not quick else []):
        with database(kind) as url:
            engine = Engine(settings(url), DIRECTORY)
            engine.repository.deploy("seq", [("seq.bpmn", seq_xml)])
            engine.repository.deploy("mi", [("mi.bpmn", mi_xml)])
            seq = _summary(_walk(engine, f"bench_seq_{n_seq}", {}, n_seq))
            mi = _summary(_walk(engine, "bench_mi", {"items": list(range(n_mi))}, n_mi))
            engine.close()
        out[kind] = {"sequential": seq, "multi_instance": mi}
        rows += [[f"itsmflow {kind}: sequential {n_seq}", *_cells(seq)],
                 [f"itsmflow {kind}: multi-instance {n_mi}", *_cells(mi)]]
    print(table(rows, ["process", "steps", "first 10% ms/step", "last 10% ms/step", "growth", "total s"]))
    # kept for readers of older result files
    out["sequential"], out["multi_instance"] = out["sqlite"]["sequential"], out["sqlite"]["multi_instance"]
    return out


def _cells(s: dict[str, Any]) -> list[Any]:
    return [s["steps"], s["first_10pct_ms"], s["last_10pct_ms"], s["growth"], s["total_s"]]
