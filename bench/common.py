"""Shared helpers: fresh databases, a bench directory, percentiles, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, text

from itsmflow.engine.directory import Directory
from itsmflow.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
PG_URL = os.environ.get("ITSMFLOW_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

DIRECTORY = Directory.from_dict({"users": [
    {"id": f"u{i}", "name": f"Bench user {i}", "roles": ["bench"], "token": f"bench-{i}"} for i in range(8)
] + [{"id": "admin", "name": "Admin", "roles": ["admin", "bench"], "token": "bench-admin"},
      {"id": "inbox", "name": "Inbox user", "roles": ["bench-r7"], "token": "bench-inbox"}]})


def pg_available() -> bool:
    try:
        eng = create_engine(PG_URL)
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


@contextmanager
def database(kind: str) -> Iterator[str]:
    """A fresh database URL: a temporary SQLite file, or a new schema in PostgreSQL."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            yield f"sqlite:///{d}/bench.db"
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def settings(url: str, **extra: Any) -> Settings:
    return Settings(db=url, default_pack=False, **extra)


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    s = sorted(samples)

    def p(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)

    return {"n": len(s), "p50_ms": p(0.50), "p95_ms": p(0.95), "p99_ms": p(0.99),
            "mean_ms": round(statistics.fmean(s) * 1000, 2)}


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def write_result(suite: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    data = {"suite": suite, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]},
            **data}
    path = RESULTS / f"{suite}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def table(rows: list[list[Any]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
