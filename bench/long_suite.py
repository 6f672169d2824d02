"""``python -m bench long``: time per step along a 200-step sequential process and along a
1,000-item multi-instance task. Flat means the cost of a step does not grow with the instance's
history; SpiffWorkflow keeps every completed task in its tree, so its walk grows with it."""

from __future__ import annotations

import time
from typing import Any

from itsmflow.engine.core import Engine

from . import processes
from .common import DIRECTORY, database, settings, table


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


def _summary(times: list[float]) -> dict[str, Any]:
    k = max(1, len(times) // 10)
    first, last = sum(times[:k]) / k, sum(times[-k:]) / k
    return {"steps": len(times), "first_10pct_ms": round(first * 1000, 2), "last_10pct_ms": round(last * 1000, 2),
            "growth": round(last / first, 2)}


def main(quick: bool = False) -> dict[str, Any]:
    n_seq, n_mi = (50, 100) if quick else (200, 1000)
    with database("sqlite") as url:
        engine = Engine(settings(url), DIRECTORY)
        engine.repository.deploy("seq", [("seq.bpmn", processes.sequential(n_seq))])
        engine.repository.deploy("mi", [("mi.bpmn", processes.multi_instance())])
        seq = _summary(_walk(engine, f"bench_seq_{n_seq}", {}, n_seq))
        mi = _summary(_walk(engine, "bench_mi", {"items": list(range(n_mi))}, n_mi))
        engine.close()
    rows = [[f"sequential {n_seq}", seq["steps"], seq["first_10pct_ms"], seq["last_10pct_ms"], seq["growth"]],
            [f"multi-instance {n_mi}", mi["steps"], mi["first_10pct_ms"], mi["last_10pct_ms"], mi["growth"]]]
    print(table(rows, ["process", "steps", "first 10% ms/step", "last 10% ms/step", "growth"]))
    return {"sequential": seq, "multi_instance": mi}
