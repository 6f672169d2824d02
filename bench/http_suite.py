"""``python -m bench http``: end to end over HTTP with concurrent clients against one and two
``itsmflow serve`` processes, on SQLite and PostgreSQL. Each client: start an instance, then for
each of its 10 steps an inbox query and a complete. Reports completed instances/s and p50/p95/p99
latency of complete and of the inbox query."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from . import processes
from .common import DIRECTORY, database, percentiles, pg_available, table

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(db_url: str, directory: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITSMFLOW_")}
    proc = subprocess.Popen([sys.executable, "-m", "itsmflow.cli", "serve", "--port", str(port), "--db", db_url,
                             "--directory", str(directory), "--no-default-pack"],
                            cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not start: {log.read_text()}")


def _client(base: str, token: str, n: int, out: dict[str, list[float]], errors: list[str]) -> None:
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=h, timeout=60) as c:
        for _ in range(n):
            r = c.post("/api/process-definitions/key/bench_ten/start", json={})
            if r.status_code != 201:
                errors.append(r.text)
                continue
            iid = r.json()["id"]
            first = True
            while True:
                t0 = time.perf_counter()
                inbox = c.get("/api/tasks", params={"processInstanceId": iid, "size": 1})
                out["inbox"].append(time.perf_counter() - t0)
                tasks = inbox.json()
                if not tasks:
                    out["done"].append(1)
                    break
                t0 = time.perf_counter()
                r = c.post(f"/api/tasks/{tasks[0]['id']}/complete",
                           json={"variables": {"amount": 500} if first else {}})
                out["complete"].append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                first = False


def run(kind: str, workers: int, n: int) -> dict[str, Any]:
    with database(kind) as url, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "directory.yaml"
        users = [{"id": u.id, "name": u.name, "roles": sorted(u.roles), "token_sha256": u.token_sha256}
                 for u in DIRECTORY.users.values()]
        directory.write_text(yaml.safe_dump({"users": users}))
        procs = []
        try:
            bases = []
            for i in range(workers):
                proc, base = _spawn(url, directory, Path(tmp) / f"serve-{i}.log")
                procs.append(proc)
                bases.append(base)
            r = httpx.post(f"{bases[0]}/api/deployments", headers={"Authorization": "Bearer bench-admin"},
                           data={"name": "bench"}, files=[("files", ("ten.bpmn", processes.ten_user_tasks()))])
            r.raise_for_status()
            out: dict[str, list[float]] = {"inbox": [], "complete": [], "done": []}
            errors: list[str] = []
            per_client = max(1, n // CLIENTS)
            threads = [threading.Thread(target=_client, args=(bases[i % workers], f"bench-{i % 8}", per_client,
                                                              out, errors)) for i in range(CLIENTS)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - t0
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=10)
    return {"db": kind, "workers": workers, "clients": CLIENTS, "instances": len(out["done"]),
            "per_s": round(len(out["done"]) / seconds, 2), "complete": percentiles(out["complete"]),
            "inbox": percentiles(out["inbox"]), "errors": len(errors), "error_samples": errors[:3]}


def main(n: int = 100, quick: bool = False) -> dict[str, Any]:
    kinds = ["sqlite"] + (["postgresql"] if pg_available() else [])
    runs = [run(kind, workers, n) for kind in kinds for workers in (1, 2)]
    rows = [[r["db"], r["workers"], r["instances"], r["per_s"], r["complete"].get("p50_ms"),
             r["complete"].get("p95_ms"), r["complete"].get("p99_ms"), r["inbox"].get("p50_ms"),
             r["inbox"].get("p95_ms"), r["inbox"].get("p99_ms"), r["errors"]] for r in runs]
    print(table(rows, ["db", "workers", "instances", "inst/s", "complete p50", "p95", "p99", "inbox p50", "p95",
                       "p99", "errors"]))
    return {"runs": runs}
