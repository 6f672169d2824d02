"""``python -m bench engine``: the same 10-user-task process (gateways, a script) run by
(a) raw SpiffWorkflow in memory, (b) itsmflow in-process with durable commits on SQLite,
(c) the same on PostgreSQL — in one run, as completed instances per second and ratios to (a)."""

from __future__ import annotations

import time
from typing import Any

from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState

from itsmflow.engine.bpmn import parse_deployment
from itsmflow.engine.core import Engine

from . import processes
from .common import DIRECTORY, Timer, database, pg_available, settings, table, write_result


def run_raw(n: int) -> float:
    return run_raw_timed(n)[0]


def run_raw_timed(n: int) -> tuple[float, float]:
    """(instances per wall second, instances per CPU second of this process)."""
    parsed = parse_deployment([("ten.bpmn", processes.ten_user_tasks())])
    spec, subs = parsed.specs["bench_ten"], parsed.subprocess_specs["bench_ten"]
    cpu0 = time.process_time()
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
    return n / t.seconds, n / (time.process_time() - cpu0)


def run_engine(url: str, n: int) -> tuple[float, dict[str, Any]]:
    engine = Engine(settings(url), DIRECTORY)
    engine.repository.deploy("bench", [("ten.bpmn", processes.ten_user_tasks())])
    user = DIRECTORY.get("u1").principal()
    steps = 0
    cpu0 = time.process_time()
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
    cpu = time.process_time() - cpu0
    cache = getattr(engine.executor, "workflows", None)  # absent in engines before the cache
    detail = {"steps": steps, "seconds": round(t.seconds, 3), "cpu_seconds": round(cpu, 3),
              "per_cpu_s": round(n / cpu, 2), "workflow_cache_hits": getattr(cache, "hits", None),
              "workflow_cache_misses": getattr(cache, "misses", None),
              "statements": statements_per_step(engine, user)}
    engine.close()
    return n / t.seconds, detail


def statements_per_step(engine: Engine, user: Any) -> dict[str, int]:
    """SQL statements of one inbox query and of one completion (after the timed run, not timed)."""
    from sqlalchemy import event

    inst = engine.runtime.start("bench_ten")
    seen: list[str] = []

    def count(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        seen.append(statement)

    event.listen(engine.db, "before_cursor_execute", count)
    try:
        tasks, _ = engine.tasks.query(process_instance_id=inst.id, size=1)
        query = len(seen)
        engine.tasks.complete(tasks[0].id, user, {"amount": 5})
        first = len(seen) - query  # t1 -> script -> merge -> t3 (opens a task)
        tasks, _ = engine.tasks.query(process_instance_id=inst.id, size=1)
        mark = len(seen)
        engine.tasks.complete(tasks[0].id, user, {})
        second = len(seen) - mark
    finally:
        event.remove(engine.db, "before_cursor_execute", count)
    return {"inbox_query": query, "complete_after_script": first, "complete": second}


def main(n: int = 100) -> dict[str, Any]:
    raw_n = n * 5  # raw Spiff is fast: run more instances so its timing is not noise
    raw, raw_cpu = run_raw_timed(raw_n)
    rows = [["(a) raw SpiffWorkflow, in memory", raw_n, f"{raw:.1f}", "1.00", f"{raw_cpu:.1f}", "1.00"]]
    result: dict[str, Any] = {"instances": n, "raw_per_s": raw, "raw_per_cpu_s": raw_cpu}
    with database("sqlite") as url:
        sqlite, info = run_engine(url, n)
    result.update(sqlite_per_s=sqlite, sqlite_ratio=sqlite / raw, sqlite_detail=info,
                  sqlite_cpu_ratio=info["per_cpu_s"] / raw_cpu)
    rows.append(["(b) itsmflow, durable, SQLite", n, f"{sqlite:.1f}", f"{sqlite / raw:.3f}",
                 f"{info['per_cpu_s']:.1f}", f"{info['per_cpu_s'] / raw_cpu:.3f}"])
    if pg_available():
        with database("postgresql") as url:
            pg, info = run_engine(url, n)
        result.update(pg_per_s=pg, pg_ratio=pg / raw, pg_detail=info, pg_cpu_ratio=info["per_cpu_s"] / raw_cpu)
        rows.append(["(c) itsmflow, durable, PostgreSQL", n, f"{pg:.1f}", f"{pg / raw:.3f}",
                     f"{info['per_cpu_s']:.1f}", f"{info['per_cpu_s'] / raw_cpu:.3f}"])
    # per CPU second of this process: robust on a shared machine; for PostgreSQL it leaves out the
    # server's own CPU, so only the wall-clock ratio is a fair comparison there
    print(table(rows, ["run", "instances", "completed/s", "ratio to (a)", "per CPU s", "CPU ratio"]))
    print("SQL statements:", result["sqlite_detail"]["statements"],
          "workflow cache hits/misses:", result["sqlite_detail"]["workflow_cache_hits"],
          result["sqlite_detail"]["workflow_cache_misses"])
    print("target: (b)/(a) >= 0.5 —", "met" if result["sqlite_ratio"] >= 0.5 else "NOT met")
    return result


if __name__ == "__main__":  # pragma: no cover
    write_result("engine", main())
