"""``python -m bench scale``: inbox-query and complete latency with 1k, 10k and 100k open instances
(seeded in bulk by copying a real instance's rows), and timer lag with 10k pending timers."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from sqlalchemy import insert, select, update

from itsmflow.engine.clock import utcnow
from itsmflow.engine.core import Engine
from itsmflow.engine.storage.models import HumanTask, Job, ProcessInstance, TaskCandidate

from . import processes
from .common import DIRECTORY, database, percentiles, pg_available, settings, table


ROLE_SPREAD = 100  # seeded tasks are spread over 100 roles: an inbox sees about 1% of them


def seed_copies(engine: Engine, template_id: str, count: int, batch: int = 2000, spread: bool = True) -> None:
    """Insert ``count`` copies of an instance with its open task rows and jobs (new ids);
    with ``spread`` the copies' tasks go to roles ``bench-r0`` … ``bench-r99``."""
    with engine.sessions() as s:
        inst = s.get(ProcessInstance, template_id)
        tasks = list(s.scalars(select(HumanTask).where(HumanTask.instance_id == template_id)))
        jobs = list(s.scalars(select(Job).where(Job.instance_id == template_id)))
        cands = list(s.scalars(select(TaskCandidate).where(TaskCandidate.task_id.in_([t.id for t in tasks]))))
        inst_cols = {c.key: getattr(inst, c.key) for c in ProcessInstance.__table__.columns}
        task_cols = [{c.key: getattr(t, c.key) for c in HumanTask.__table__.columns} for t in tasks]
        job_cols = [{c.key: getattr(j, c.key) for c in Job.__table__.columns} for j in jobs]
    done = 0
    while done < count:
        n = min(batch, count - done)
        rows_i, rows_t, rows_c, rows_j = [], [], [], []
        for k in range(n):
            iid = str(uuid.uuid4())
            role = f"bench-r{(done + k) % ROLE_SPREAD}"
            rows_i.append({**inst_cols, "id": iid, "business_key": None})
            for t in task_cols:
                tid = str(uuid.uuid4())
                rows_t.append({**t, "id": tid, "instance_id": iid})
                rows_c += [{"task_id": tid, "kind": c.kind, "value": role if spread and c.kind == "role" else c.value}
                           for c in cands if c.task_id == t["id"]]
            for j in job_cols:
                rows_j.append({**j, "id": str(uuid.uuid4()), "instance_id": iid})
        with engine.db.begin() as conn:
            conn.execute(insert(ProcessInstance), rows_i)
            if rows_t:
                conn.execute(insert(HumanTask), rows_t)
            if rows_c:
                conn.execute(insert(TaskCandidate), rows_c)
            if rows_j:
                conn.execute(insert(Job), rows_j)
        done += n


def analyze(engine: Engine) -> None:
    """Refresh planner statistics after a bulk load (autovacuum would do it in production)."""
    with engine.db.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


def measure(engine: Engine, samples: int = 60) -> dict[str, Any]:
    user = DIRECTORY.get("u3").principal()
    inbox, complete = [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        engine.tasks.query(candidate_user="inbox", size=50)
        inbox.append(time.perf_counter() - t0)
    for _ in range(max(10, samples // 3)):
        inst = engine.runtime.start("bench_ten")
        tid = engine.tasks.query(process_instance_id=inst.id, size=1)[0][0].id
        t0 = time.perf_counter()
        engine.tasks.complete(tid, user, {"amount": 5})
        complete.append(time.perf_counter() - t0)
    return {"inbox": percentiles(inbox), "complete": percentiles(complete)}


def timer_lag(engine: Engine, pending: int) -> dict[str, Any]:
    engine.repository.deploy("timer", [("timer.bpmn", processes.timer_wait())])
    template = engine.runtime.start("bench_timer").id
    seed_copies(engine, template, pending - 1, spread=False)
    due = utcnow()
    with engine.db.begin() as conn:
        conn.execute(update(Job).where(Job.job_type == "timer").values(due_at=due))
    t0 = time.perf_counter()
    engine.jobs.run_until_idle(max_rounds=10_000)
    seconds = time.perf_counter() - t0
    with engine.sessions() as s:
        from itsmflow.engine.storage.models import HistoryEvent

        fired = [json.loads(d)["firedAt"] for d in s.scalars(
            select(HistoryEvent.data_json).where(HistoryEvent.type == "timer_fired"))]
    from datetime import datetime

    lags = [(datetime.fromisoformat(f) - due).total_seconds() for f in fired]
    return {"pending": pending, "fired": len(fired), "seconds": round(seconds, 2),
            "fired_per_s": round(len(fired) / seconds, 1), "lag": percentiles(lags)}


def timer_lag_steady(engine: Engine, pending: int, stream: int, seconds: float) -> dict[str, Any]:
    """Timer lag as a serve process sees it: ``pending`` timers wait (due in an hour) while ``stream`` of
    them fall due one after another over ``seconds``; the job executor runs on its scheduler (poll interval
    of the settings), and each fired timer's lag is its ``firedAt`` minus its ``due``."""
    from datetime import datetime, timedelta

    from itsmflow.engine.storage.models import HistoryEvent

    engine.repository.deploy("timer", [("timer.bpmn", processes.timer_wait())])
    template = engine.runtime.start("bench_timer").id
    seed_copies(engine, template, pending - 1, spread=False)
    start = utcnow() + timedelta(seconds=1)
    with engine.db.begin() as conn:
        conn.execute(update(Job).where(Job.job_type == "timer").values(due_at=start + timedelta(hours=1)))
        ids = [r[0] for r in conn.execute(select(Job.id).where(Job.job_type == "timer").limit(stream))]
        for i, jid in enumerate(ids):  # evenly spread due times
            conn.execute(update(Job).where(Job.id == jid).values(due_at=start + timedelta(seconds=seconds * i / stream)))
    analyze(engine)
    engine.jobs.start(poll_seconds=engine.settings.job_poll_seconds)
    try:
        time.sleep(1 + seconds + 3)
    finally:
        engine.jobs.stop()
    with engine.sessions() as s:
        events = [json.loads(d) for d in s.scalars(
            select(HistoryEvent.data_json).where(HistoryEvent.type == "timer_fired"))]
    lags = [(datetime.fromisoformat(e["firedAt"]) - datetime.fromisoformat(e["due"])).total_seconds() for e in events]
    return {"pending": pending, "due_in_window": len(ids), "window_s": seconds, "fired": len(events),
            "poll_s": engine.settings.job_poll_seconds, "lag": percentiles(lags)}


def main(quick: bool = False, only: str | None = None) -> dict[str, Any]:
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    kinds = ["sqlite"] + (["postgresql"] if pg_available() else [])
    out: dict[str, Any] = {"inbox_complete": [], "timers": []}
    if only in (None, "latency"):
        latency(out, kinds, sizes)
    if only in (None, "burst"):
        timers_burst(out, kinds, quick)
    if only in (None, "steady"):
        timers_steady(out, kinds, quick)
    return out


def latency(out: dict[str, Any], kinds: list[str], sizes: list[int]) -> None:
    rows = []
    for kind in kinds:
        with database(kind) as url:
            engine = Engine(settings(url), DIRECTORY)
            engine.repository.deploy("bench", [("ten.bpmn", processes.ten_user_tasks())])
            template = engine.runtime.start("bench_ten").id
            have = 1
            for size in sizes:
                seed_copies(engine, template, size - have)
                have = size
                analyze(engine)
                m = measure(engine)
                out["inbox_complete"].append({"db": kind, "open_instances": size, **m})
                rows.append([kind, size, m["inbox"]["p50_ms"], m["inbox"]["p95_ms"], m["complete"]["p50_ms"],
                             m["complete"]["p99_ms"]])
            engine.close()
    print(table(rows, ["db", "open instances", "inbox p50 ms", "inbox p95 ms", "complete p50 ms",
                       "complete p99 ms"]))


def timers_burst(out: dict[str, Any], kinds: list[str], quick: bool) -> None:
    trows = []
    for kind in kinds:
        with database(kind) as url:
            engine = Engine(settings(url), DIRECTORY)
            t = timer_lag(engine, 1_000 if quick else 10_000)
            engine.close()
        out["timers"].append({"db": kind, **t})
        trows.append([kind, t["pending"], t["fired"], t["fired_per_s"], t["lag"].get("p50_ms"),
                      t["lag"].get("p99_ms")])
    print(table(trows, ["db", "pending timers", "fired", "fired/s", "lag p50 ms", "lag p99 ms"]))
    print("note: timer lag here is the time to drain a backlog with ONE in-process executor (all due at once)")


def timers_steady(out: dict[str, Any], kinds: list[str], quick: bool) -> None:
    out["timers_steady"] = []
    srows = []
    for kind in kinds:
        with database(kind) as url:
            engine = Engine(settings(url), DIRECTORY)
            t = timer_lag_steady(engine, 1_000 if quick else 10_000, 200 if quick else 1_000, 10.0 if quick else 20.0)
            engine.close()
        out["timers_steady"].append({"db": kind, **t})
        srows.append([kind, t["pending"], t["due_in_window"], t["window_s"], t["fired"], t["lag"].get("p50_ms"),
                      t["lag"].get("p99_ms")])
    print(table(srows, ["db", "pending timers", "due in window", "window s", "fired", "lag p50 ms", "lag p99 ms"]))
    print("note: the job executor on its scheduler (poll interval of the settings) while the others stay pending")
