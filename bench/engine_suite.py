"""``python -m bench engine``: the same 10-user-task process (gateways, a script) run by
(a) raw SpiffWorkflow in memory, (b) itsmflow in-process with durable commits on SQLite,
(c) the same on PostgreSQL — in one run, as completed instances per second and ratios to (a)."""

from __future__ import annotations

from typing import Any

from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState

from itsmflow.engine.bpmn import parse_deployment
from itsmflow.engine.core import Engine

from . import processes
from .common import DIRECTORY, Timer, database, pg_available, settings, table, write_result


def run_raw(n: int) -> float:
    parsed = parse_deployment([("ten.bpmn", processes.ten_user_tasks())])
    spec, subs = parsed.specs["bench_ten"], parsed.subprocess_specs["bench_ten"]
    with Timer() as t:
        for i in range(n):
            wf = BpmnWorkflow(spec, subs)
            wf.do_engine_steps()
            first = True
            while not wf.completed:
                task = wf.get_next_task(state=TaskState.READY, manual=True)
                if first:
                    task.data["amount"] = 500 if i % 2 else 5
                    first = False
                task.run()
                wf.do_engine_steps()
    return n / t.seconds


def run_engine(url: str, n: int) -> tuple[float, dict[str, Any]]:
    engine = Engine(settings(url), DIRECTORY)
    engine.repository.deploy("bench", [("ten.bpmn", processes.ten_user_tasks())])
    user = DIRECTORY.get("u1").principal()
    steps = 0
    with Timer() as t:
        for i in range(n):
            inst = engine.runtime.start("bench_ten", business_key=f"B-{i}")
            first = True
            while True:
                tasks, _ = engine.tasks.query(process_instance_id=inst.id, size=1)
                if not tasks:
                    break
                engine.tasks.complete(tasks[0].id, user, {"amount": 500 if i % 2 else 5} if first else {})
                first = False
                steps += 1
    engine.close()
    return n / t.seconds, {"steps": steps, "seconds": round(t.seconds, 3)}


def main(n: int = 100) -> dict[str, Any]:
    raw_n = n * 5  # raw Spiff is fast: run more instances so its timing is not noise
    raw = run_raw(raw_n)
    rows = [["(a) raw SpiffWorkflow, in memory", raw_n, f"{raw:.1f}", "1.00"]]
    result: dict[str, Any] = {"instances": n, "raw_per_s": raw}
    with database("sqlite") as url:
        sqlite, info = run_engine(url, n)
    result.update(sqlite_per_s=sqlite, sqlite_ratio=sqlite / raw, sqlite_detail=info)
    rows.append(["(b) itsmflow, durable, SQLite", n, f"{sqlite:.1f}", f"{sqlite / raw:.3f}"])
    if pg_available():
        with database("postgresql") as url:
            pg, info = run_engine(url, n)
        result.update(pg_per_s=pg, pg_ratio=pg / raw, pg_detail=info)
        rows.append(["(c) itsmflow, durable, PostgreSQL", n, f"{pg:.1f}", f"{pg / raw:.3f}"])
    print(table(rows, ["run", "instances", "completed/s", "ratio to (a)"]))
    print("target: (b)/(a) >= 0.5 —", "met" if result["sqlite_ratio"] >= 0.5 else "NOT met")
    return result


if __name__ == "__main__":  # pragma: no cover
    write_result("engine", main())
