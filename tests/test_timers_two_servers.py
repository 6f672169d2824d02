"""1,000 timers due within seconds, two real ``itsmflow serve`` processes on one database:
every timer fires exactly once (counted in the audit trail), and both servers share the work."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest
import yaml
from sqlalchemy import text

from itsmflow.engine.clock import utcnow
from itsmflow.engine.core import Engine

from .conftest import fixture_bytes
from .test_api_two_servers import USERS, free_port, spawn, stop, wait_ready

N_TIMERS = 1000


@pytest.mark.slow
def test_each_of_1000_timers_fires_exactly_once_across_two_servers(settings, directory, db_url, tmp_path):
    engine = Engine(settings, directory)
    engine.repository.deploy("timers", [("timers.bpmn", fixture_bytes("timers.bpmn"))])
    ids = [engine.runtime.start("waiting", variables={"wait": "PT1H"}).id for _ in range(N_TIMERS)]
    # bring every timer due within the next few seconds
    with engine.db.begin() as conn:
        n = conn.execute(text("UPDATE job SET due_at = :t WHERE job_type = 'timer'"),
                         {"t": utcnow() + timedelta(seconds=3)}).rowcount
    assert n == N_TIMERS

    directory_file = tmp_path / "directory.yaml"
    directory_file.write_text(yaml.safe_dump({"users": USERS}))
    procs = []
    try:
        for name in ("a", "b"):
            port, log = free_port(), tmp_path / f"server-{name}.log"
            proc = spawn(port, db_url, directory_file, log)
            procs.append(proc)
            wait_ready(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 180
        remaining = N_TIMERS
        while time.monotonic() < deadline:
            remaining = engine.runtime.list(definition_key="waiting", state="active", size=1)[1]
            if remaining == 0:
                break
            time.sleep(0.5)
        assert remaining == 0, f"{remaining} timers still pending"
    finally:
        for proc in procs:
            stop(proc)

    with engine.db.connect() as conn:
        fired = conn.execute(text("SELECT scope, data_json FROM history_event WHERE type = 'timer_fired'")).all()
        jobs_left = conn.execute(text("SELECT count(*) FROM job")).scalar()
    per_instance = Counter(scope for scope, _ in fired)
    assert set(per_instance) == set(ids)
    assert set(per_instance.values()) == {1}  # exactly once each
    assert jobs_left == 0
    nodes = Counter(yaml.safe_load(data)["node"] for _, data in fired)
    assert len(nodes) == 2, f"one server did all the work: {nodes}"
    for iid in ids[:20]:
        assert engine.runtime.get(iid).variables["fired"] is True
    engine.close()
