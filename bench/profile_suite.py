"""``python -m bench profile``: where the time of a durable step goes (pyinstrument, if installed:
``pip install -e .[bench]``). Runs the engine suite's workload on SQLite (and PostgreSQL when
reachable) under the sampling profiler and writes the call tree next to the JSON result."""

from __future__ import annotations

from typing import Any

from .common import RESULTS, database, pg_available
from .engine_suite import run_engine


def main(n: int = 30) -> dict[str, Any]:
    try:
        from pyinstrument import Profiler
    except ImportError:  # pragma: no cover - optional
        print("pyinstrument is not installed: pip install -e '.[bench]'")
        return {"skipped": "pyinstrument not installed"}
    out: dict[str, Any] = {}
    RESULTS.mkdir(exist_ok=True)
    for kind in ["sqlite"] + (["postgresql"] if pg_available() else []):
        with database(kind) as url:
            run_engine(url, 2)  # warm up: spec cache, compiled statements
            profiler = Profiler(interval=0.0005)
            profiler.start()
            per_s, detail = run_engine(url, n)
            profiler.stop()
        text = profiler.output_text(unicode=False, color=False)
        path = RESULTS / f"profile-{kind}.txt"
        path.write_text(text)
        session = profiler.last_session
        out[kind] = {"per_s_under_profiler": round(per_s, 2), "wall_s": round(session.duration, 3),
                     "cpu_s": round(session.cpu_time, 3), "tree": str(path), **detail}
        print(f"{kind}: {per_s:.1f} instances/s under the profiler; wall {session.duration:.2f} s, "
              f"CPU {session.cpu_time:.2f} s (the rest is waiting: database, disk, or other processes on a busy "
              f"machine); tree in {path}")
    return out
