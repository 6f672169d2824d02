"""Two real ``itsmflow serve`` processes over one database: what one serves, the other sees at once.

PostgreSQL when ``ITSMFLOW_TEST_DB`` is set (the per-test schema of ``db_url``), else a shared SQLite file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import fixture_bytes

TEN = fixture_bytes("ten_steps.bpmn")
USERS = [
    {"id": "rita", "name": "Rita Requester", "roles": ["requester"], "token": "t-rita"},
    {"id": "mona", "name": "Mona Manager", "roles": ["manager"], "token": "t-mona"},
    {"id": "wes", "name": "Wes Worker", "roles": ["worker"], "token": "t-wes"},
    {"id": "root", "name": "Admin", "roles": ["admin"], "token": "t-root"},
]
REPO = Path(__file__).resolve().parent.parent


def H(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer t-{user}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(port: int, db_url: str, directory: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "itsmflow.cli", "serve", "--port", str(port), "--db", db_url,
           "--directory", str(directory), "--no-default-pack"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITSMFLOW_")}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, base: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{base}/api/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server at {base} not ready after {timeout}s:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
def test_task_completed_on_one_server_leaves_the_inbox_of_the_other(db_url, tmp_path):
    directory = tmp_path / "directory.yaml"
    directory.write_text(yaml.safe_dump({"users": USERS}))
    procs: list[subprocess.Popen] = []
    try:
        bases = []
        for name in ("a", "b"):  # one after the other: the first one migrates the schema
            port, log = free_port(), tmp_path / f"server-{name}.log"
            proc = spawn(port, db_url, directory, log)
            procs.append(proc)
            base = f"http://127.0.0.1:{port}"
            wait_ready(proc, base, log)
            bases.append(base)
        a, b = (httpx.Client(base_url=base, timeout=30.0) for base in bases)

        kind = "postgresql" if db_url.startswith("postgresql") else "sqlite"
        assert a.get("/api/health").json() == b.get("/api/health").json() == {"status": "ok", "db": kind}
        dep = a.post("/api/deployments", headers=H("root"), data={"name": "ten"},
                     files=[("files", ("ten_steps.bpmn", TEN, "application/xml"))])
        assert dep.status_code == 201, dep.text
        # B sees A's deployment, A sees B's instances
        inst = b.post("/api/process-definitions/key/ten_steps/start", headers=H("rita"),
                      json={"businessKey": "TWO-1"})
        assert inst.status_code == 201, inst.text
        iid = inst.json()["id"]
        assert a.get(f"/api/process-instances/{iid}", headers=H("rita")).json()["businessKey"] == "TWO-1"

        inbox_b = b.get("/api/tasks", headers=H("rita"), params={"candidateUser": "rita"}).json()
        assert [t["taskDefinitionKey"] for t in inbox_b] == ["record"]
        done = a.post(f"/api/tasks/{inbox_b[0]['id']}/complete", headers=H("rita"),
                      json={"variables": {"amount": 5000}})
        assert done.status_code == 200, done.text

        # the very next request on B no longer shows the task; the approval is in the manager's inbox
        assert b.get("/api/tasks", headers=H("rita"), params={"candidateUser": "rita"}).json() == []
        problem = b.post(f"/api/tasks/{inbox_b[0]['id']}/complete", headers=H("rita"), json={"variables": {}})
        assert problem.status_code == 409
        assert problem.headers["content-type"].startswith("application/problem+json")
        approvals = b.get("/api/tasks", headers=H("mona"), params={"candidateUser": "mona"}).json()
        assert [t["taskDefinitionKey"] for t in approvals] == ["approve"]

        # a claim on B is seen by A at once
        assert b.post(f"/api/tasks/{approvals[0]['id']}/claim", headers=H("mona")).status_code == 204
        assert a.get(f"/api/tasks/{approvals[0]['id']}", headers=H("wes")).json()["assignee"] == "mona"
        a.close()
        b.close()
    finally:
        for proc in procs:
            stop(proc)
