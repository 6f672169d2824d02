"""kill -9 between and during steps: after a restart no task is lost or duplicated."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from SpiffWorkflow.util.task import TaskState

from .conftest import fixture_bytes

ROOT = Path(__file__).resolve().parent.parent
PATH_KEYS = ["record", "approve", "prepare_a", "prepare_b", "implement", "review"]


def spawn(db_url, steps=None):
    args = [sys.executable, "-m", "tests.crash_worker", db_url] + ([str(steps)] if steps else [])
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    return proc


def assert_consistent(engine, instance_ids):
    """Open task rows are exactly the READY user tasks of each instance's snapshot."""
    for iid in instance_ids:
        row, _, wf = engine.executor.load_workflow(iid)
        ready = {str(t.id) for t in wf.get_tasks(state=TaskState.READY, manual=True)}
        rows = {t.id for t in engine.tasks.query(process_instance_id=iid, size=100)[0]}
        if row.state == "completed":
            assert rows == set() and ready == set()
        else:
            assert rows == ready, (iid, rows, ready)
        assert engine.history.verify(iid)[0].ok


def assert_walked_exactly_once(engine, instance_ids):
    for iid in instance_ids:
        assert engine.runtime.get(iid).state == "completed"
        done, _ = engine.tasks.query(process_instance_id=iid, state="completed", size=100)
        assert Counter(t.task_definition_key for t in done) == Counter(PATH_KEYS)
        events = engine.history.events(iid)
        assert Counter(e.activity_id for e in events if e.type == "task_completed") == Counter(PATH_KEYS)
        assert Counter(e.activity_id for e in events if e.type == "task_created") == Counter(PATH_KEYS)


@pytest.mark.slow
def test_kill_between_every_pair_of_steps(engine, db_url):
    engine.repository.deploy("ten", [("ten_steps.bpmn", fixture_bytes("ten_steps.bpmn"))])
    ids = [engine.runtime.start("ten_steps", business_key=f"K-{i}").id for i in range(2)]
    for _ in range(len(PATH_KEYS) * len(ids)):
        proc = spawn(db_url, steps=1)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert_consistent(engine, ids)
    assert_walked_exactly_once(engine, ids)


@pytest.mark.slow
def test_kill_at_random_moments(engine, db_url):
    engine.repository.deploy("ten", [("ten_steps.bpmn", fixture_bytes("ten_steps.bpmn"))])
    ids = [engine.runtime.start("ten_steps", business_key=f"R-{i}").id for i in range(4)]
    rng = random.Random(uuid.uuid4().int)
    for _ in range(8):
        proc = spawn(db_url)
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert_consistent(engine, ids)
    proc = spawn(db_url)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_consistent(engine, ids)
    assert_walked_exactly_once(engine, ids)
