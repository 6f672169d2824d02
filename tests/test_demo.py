"""``itsmflow demo``: a normal change of the ISO 20000 pack walked from RFC to closure on a temporary database."""

from __future__ import annotations

import io
import re

from rich.console import Console
from typer.testing import CliRunner

from itsmflow.cli import app
from itsmflow.demo import free_window, run_demo

STEPS = ["Raise RFC", "Classify RFC", "Assess impact and risk", "Authorise change", "Schedule change",
         "Build change", "Test change", "Confirm implementation window", "Deploy change",
         "Post-implementation review"]


def test_demo_command_walks_a_normal_change_to_closure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be left behind in the working directory
    monkeypatch.setenv("ITSMFLOW_DB", f"sqlite:///{tmp_path / 'not-this-one.db'}")  # the demo ignores it
    monkeypatch.setattr("itsmflow.cli.out", Console(width=120))  # whatever COLUMNS the test runs with
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # rich wraps long lines at the terminal width
    positions = [out.index(step) for step in STEPS]
    assert positions == sorted(positions), "steps printed out of order"
    for who in ["(alice, change-initiator)", "(bob, change-manager)", "(erin, configuration-manager)",
                "(carol, change-authority)", "(heidi, change-builder)", "(grace, independent-tester)",
                "(priya, change-implementer)"]:
        assert who in out, who
    assert "consultation pending: configuration-manager" in out
    assert "initiator-cannot-authorise" in out
    assert "no clash with the" in out
    assert "Change RFC-DEMO-1 is closed" in out and "state: completed" in out
    assert re.search(r"audit trail verified: \d+ events, hash chain intact", out)
    assert list(tmp_path.iterdir()) == []


def test_run_demo_on_the_test_database(db_url):
    """The same walk through the engine services, on SQLite or PostgreSQL (``ITSMFLOW_TEST_DB``)."""
    buffer = io.StringIO()
    assert run_demo(Console(file=buffer, width=200), db_url=db_url) is True
    out = buffer.getvalue()
    assert "Change RFC-DEMO-1 is closed" in out and "audit trail verified" in out


def test_the_demo_window_avoids_every_freeze_window():
    from datetime import datetime, timezone

    policies = {"freeze_windows": {"windows": [
        {"start": "2030-01-10T00:00:00Z", "end": "2030-01-20T00:00:00Z", "reason": "a"},
        {"start": "2030-01-24T00:00:00Z", "end": "2030-01-25T00:00:00Z", "reason": "b"}]}}
    start, end = free_window(policies, now=datetime(2029, 12, 27, 9, 0, tzinfo=timezone.utc))
    # two weeks ahead is 2030-01-10 (frozen), a week later 2030-01-17 (frozen), then 2030-01-24 (frozen)
    assert (start, end) == ("2030-01-31T20:00:00Z", "2030-01-31T22:00:00Z")
