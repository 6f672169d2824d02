"""Informed roles: one notification per informed user when a task is created and when it is completed;
``GET /api/notifications`` for the caller; optional webhook delivery with retries."""

from __future__ import annotations

import json
from datetime import datetime, timezone
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from sqlalchemy import text

from itsmflow.engine.core import Engine

from .conftest import MINI_ORG, MINI_PACK
from .packutil import H, complete, consult, drive_to, ok, problem, start, task


def kinds(client, user, **params):
    return [(n["type"], n["taskId"]) for n in ok(client.get("/api/notifications", headers=H(user), params=params))]


def test_informed_users_are_notified_at_creation_and_completion(mini_client):
    iid = start(mini_client, "ivan")["id"]
    classify = task(mini_client, iid, "classify")
    # classify informs change-initiator: ivan and carl; nobody else
    for user in ("ivan", "carl"):
        assert kinds(mini_client, user) == [("task_created", classify["id"])]
    for user in ("mike", "mona", "alma", "cora", "bob", "tess", "sven", "cus", "root"):
        assert kinds(mini_client, user) == [], user

    ok(consult(mini_client, classify["id"], "cora"), 201)
    ok(complete(mini_client, classify["id"], "mike", {"category": "standard"}))
    authorise = task(mini_client, iid, "authorise")
    notes = ok(mini_client.get("/api/notifications", headers=H("ivan")))
    assert [(n["type"], n["taskId"]) for n in notes] == [  # newest first
        ("task_created", authorise["id"]), ("task_completed", classify["id"]), ("task_created", classify["id"])]
    completed = notes[1]
    assert completed["processInstanceId"] == iid and completed["definitionKey"] == "mini_change"
    assert "Classify change" in completed["message"] and "mike" in completed["message"]
    assert completed["read"] is False and completed["deliveryState"] == "none"
    # authorise informs change-initiator and change-manager
    assert kinds(mini_client, "mona") == [("task_created", authorise["id"])]
    assert kinds(mini_client, "alma") == []

    # read one: unread filter, and nobody else can touch it
    problem(mini_client.post(f"/api/notifications/{completed['id']}/read", headers=H("carl")), 404)
    resp = mini_client.post(f"/api/notifications/{completed['id']}/read", headers=H("ivan"))
    assert resp.status_code == 204
    unread = kinds(mini_client, "ivan", unread="true")
    assert ("task_completed", classify["id"]) not in unread and len(unread) == 2
    assert len(kinds(mini_client, "ivan")) == 3
    page = mini_client.get("/api/notifications", headers=H("ivan"), params={"size": 1})
    assert len(page.json()) == 1 and page.headers["x-total-count"] == "3"
    problem(mini_client.post("/api/notifications/nope/read", headers=H("ivan")), 404)


def test_notifications_come_with_the_change_and_not_without(mini_client):
    """A refused completion (form invalid) creates no notification."""
    iid = drive_to(mini_client, "authorise")
    before = kinds(mini_client, "ivan")
    problem(complete(mini_client, task(mini_client, iid, "authorise")["id"], "alma", {"decision": "nope"}), 422)
    assert kinds(mini_client, "ivan") == before


class _Hook(BaseHTTPRequestHandler):
    received: list = []
    fail_first = 0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((body, self.headers.get("X-Itsmflow-Signature")))
        status = 500 if type(self).fail_first > 0 else 204
        type(self).fail_first -= 1
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


def test_webhook_delivery_with_retries(settings, mini_directory):
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received, _Hook.fail_first = [], 1
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    engine = Engine(settings.model_copy(update={"notification_webhook_url": url,
                                                "notification_webhook_secret": "s3cret",
                                                "webhook_max_attempts": 3}), mini_directory)
    try:
        engine.packs.apply(MINI_PACK, MINI_ORG)
        engine.runtime.start("mini_change", variables={"summary": "webhook", "risk": "low"},
                             principal=mini_directory.get("ivan").principal())
        notes, _ = engine.notifications.list("ivan")
        assert [n.delivery_state for n in notes] == ["pending"]
        assert engine.jobs.run_due() == 2  # ivan's and carl's: the first POST fails
        states = {n.user_id: n.delivery_state for u in ("ivan", "carl") for n in engine.notifications.list(u)[0]}
        assert sorted(states.values()) == ["delivered", "pending"]
        with engine.db.begin() as conn:  # skip the back-off
            conn.execute(text("UPDATE job SET due_at = :t"), {"t": datetime(2000, 1, 1, tzinfo=timezone.utc)})
        assert engine.jobs.run_due() == 1
        assert {n.delivery_state for u in ("ivan", "carl") for n in engine.notifications.list(u)[0]} == {"delivered"}
        assert engine.jobs.run_due() == 0
        bodies = [b for b, _ in _Hook.received]
        assert len(bodies) == 3 and {b["userId"] for b in bodies} == {"ivan", "carl"}
        assert all(sig and sig.startswith("sha256=") for _, sig in _Hook.received)
        assert bodies[0]["type"] == "task_created" and bodies[0]["definitionKey"] == "mini_change"

        # a webhook that never accepts: given up after webhook_max_attempts, marked failed
        _Hook.fail_first = 100
        engine.runtime.start("mini_change", variables={"summary": "webhook 2", "risk": "low"},
                             principal=mini_directory.get("ivan").principal())
        for _ in range(3):
            engine.jobs.run_due()
            with engine.db.begin() as conn:
                conn.execute(text("UPDATE job SET due_at = :t"), {"t": datetime(2000, 1, 1, tzinfo=timezone.utc)})
        states = sorted(n.delivery_state for u in ("ivan", "carl") for n in engine.notifications.list(u)[0])
        assert states == ["delivered", "delivered", "failed", "failed"]
        with engine.db.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM job WHERE job_type = 'webhook'")).scalar() == 0
    finally:
        engine.close()
        server.shutdown()
