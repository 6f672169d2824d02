"""``itsmflow serve`` plumbing: exposure guard, default pack, example directory, last-resort 500s."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from itsmflow import server
from itsmflow.api.app import create_app
from itsmflow.engine.core import Engine
from itsmflow.engine.directory import Directory
from itsmflow.engine.errors import InvalidRequest
from itsmflow.settings import REPO_ROOT, Settings


EXAMPLE = REPO_ROOT / "process_packs" / "iso20000" / "orgs" / "example" / "directory.yaml"
CONTRACT_ROLES = {
    "change-initiator", "change-manager", "change-authority", "cab-member", "change-builder", "independent-tester",
    "change-implementer", "configuration-manager", "service-desk", "incident-manager", "major-incident-manager",
    "problem-manager", "release-manager", "deployment-manager", "test-manager", "service-level-manager",
    "service-owner", "customer",
}


def test_example_directory_covers_every_role():
    directory = Directory.load(EXAMPLE)
    held = set().union(*(u.roles for u in directory.users.values()))
    assert CONTRACT_ROLES <= held, CONTRACT_ROLES - held
    for role in ("change-authority", "cab-member"):
        assert len(directory.users_with_role(role)) >= 2, role
    assert any({"change-initiator", "change-authority"} <= u.roles for u in directory.users.values())
    assert [u.id for u in directory.users_with_role("admin")] == ["admin"]
    assert all(u.demo and u.token_sha256 for u in directory.users.values())
    assert directory.authenticate("demo-admin").id == "admin"
    assert directory.authenticate("demo-alice").roles >= {"change-initiator", "change-authority"}
    assert directory.has_demo_tokens


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("example.org", False),
    ("", False),
])
def test_is_loopback(host, expected):
    assert server.is_loopback(host) is expected


def test_refuses_non_loopback_with_demo_tokens(db_url, tmp_path):
    exposed = Settings(db=db_url, data_dir=tmp_path, host="0.0.0.0", default_pack=False, directory=EXAMPLE)
    with pytest.raises(InvalidRequest, match="demo tokens"):
        server.build_app(exposed)
    # with real tokens only, any host is fine
    own = tmp_path / "directory.yaml"
    own.write_text("users:\n  - id: ops\n    roles: [admin]\n    token_sha256: " + "a" * 64 + "\n")
    app = server.build_app(exposed.model_copy(update={"directory": own}))
    try:
        assert app.state.engine.directory.get("ops") is not None
    finally:
        app.state.engine.close()


def test_serve_cli_refuses_exposure_before_touching_anything(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "itsmflow.cli", "serve", "--host", "0.0.0.0", "--port", "1",
         "--db", f"sqlite:///{tmp_path / 'x.db'}", "--no-default-pack"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "contains demo tokens" in " ".join(proc.stderr.split())
    assert not (tmp_path / "x.db").exists()


def test_missing_directory_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidRequest, match="does not exist"):
        server.build_app(Settings(db=f"sqlite:///{tmp_path / 'x.db'}", directory=tmp_path / "nope.yaml"))


MINI_PACK = Path(__file__).parent / "fixtures" / "packs" / "mini"


def test_default_pack_is_applied_once(settings, directory, tmp_path):
    packs = tmp_path / "packs"
    shutil.copytree(MINI_PACK, packs / "iso20000")
    settings = settings.model_copy(update={"packs_dir": packs})
    engine = Engine(settings, directory)
    try:
        server.deploy_default_pack(engine, settings)
        server.deploy_default_pack(engine, settings)  # identical content: no new version
        assert [(d.key, d.version) for d in engine.repository.definitions()] == [("mini_change", 1)]
        assert [(p.name, p.organisation) for p in engine.packs.list()] == [("mini", "example")]
        empty = settings.model_copy(update={"packs_dir": tmp_path / "empty"})
        server.deploy_default_pack(engine, empty)  # no pack: nothing to deploy is fine
        (packs / "nothing").mkdir()
        (packs / "nothing" / "pack.yaml").write_text("name: nothing\nversion: '0'\nroles: {a: b}\nprocesses: []\n")
        server.deploy_default_pack(engine, settings.model_copy(update={"default_pack_name": "nothing"}))
        assert len(engine.repository.definitions()) == 1
    finally:
        engine.close()


def test_build_app_deploys_default_pack_when_asked(db_url, tmp_path):
    packs = tmp_path / "packs"
    shutil.copytree(MINI_PACK, packs / "iso20000")
    app = server.build_app(Settings(db=db_url, data_dir=tmp_path, default_pack=True, packs_dir=packs))
    try:
        with TestClient(app) as client:
            me = client.get("/api/me", headers={"Authorization": "Bearer t-carl"}).json()  # the pack's example org
            assert me["userId"] == "carl" and "change-authority" in me["roles"]
            resp = client.get("/api/process-definitions/key/mini_change", headers={"Authorization": "Bearer t-mike"})
            assert resp.status_code == 200
            packs_out = client.get("/api/packs", headers={"Authorization": "Bearer t-mike"}).json()
            assert [(p["name"], p["organisation"], [d["key"] for d in p["definitions"]]) for p in packs_out] == [
                ("mini", "example", ["mini_change"])]
    finally:
        app.state.engine.close()


def test_unexpected_errors_are_500_problems_with_the_request_id(settings, directory):
    engine = Engine(settings, directory)
    try:
        app = create_app(engine)

        @app.get("/api/boom")
        def boom() -> None:
            raise RuntimeError("kaboom: secret internals")

        with TestClient(app, raise_server_exceptions=False) as client:
            resp = client.get("/api/boom", headers={"X-Request-Id": "rid-42"})
        assert resp.status_code == 500
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.headers["x-request-id"] == "rid-42"
        body = resp.json()
        assert body["status"] == 500 and body["title"] and "rid-42" in body["detail"]
        assert "kaboom" not in resp.text
    finally:
        engine.close()


def test_oversized_bodies_are_refused(settings, directory):
    engine = Engine(settings, directory)
    try:
        with TestClient(create_app(engine)) as client:
            resp = client.post("/api/process-definitions/key/x/start",
                               headers={"Authorization": "Bearer t-rita", "Content-Length": str(10**10)},
                               content=b"{}")
        assert resp.status_code == 413
        assert resp.headers["content-type"].startswith("application/problem+json")
    finally:
        engine.close()
