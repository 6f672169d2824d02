"""Test fixtures. The suite runs on SQLite by default and on PostgreSQL when
``ITSMFLOW_TEST_DB`` holds a ``postgresql+psycopg://`` URL (each test gets its own schema)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from itsmflow.engine.directory import Directory
from itsmflow.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"
PG_URL = os.environ.get("ITSMFLOW_TEST_DB", "")


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def db_url(tmp_path):
    """A fresh, empty database for one test."""
    if PG_URL.startswith("postgresql"):
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield _with_search_path(PG_URL, schema)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    else:
        yield f"sqlite:///{tmp_path / 'itsmflow.db'}"


@pytest.fixture
def directory() -> Directory:
    return Directory.from_dict({
        "users": [
            {"id": "rita", "name": "Rita Requester", "roles": ["requester"], "token": "t-rita"},
            {"id": "mona", "name": "Mona Manager", "roles": ["manager"], "token": "t-mona"},
            {"id": "max", "name": "Max Manager", "roles": ["manager"], "token": "t-max"},
            {"id": "wes", "name": "Wes Worker", "roles": ["worker"], "token": "t-wes"},
            {"id": "wanda", "name": "Wanda Worker", "roles": ["worker"], "token": "t-wanda"},
            {"id": "root", "name": "Admin", "roles": ["admin"], "token": "t-root"},
        ]
    })


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    return Settings(db=db_url, data_dir=tmp_path, default_pack=False)


@pytest.fixture
def engine(settings, directory):
    from itsmflow.engine.core import Engine

    eng = Engine(settings, directory)
    yield eng
    eng.close()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# -- process packs: the mini pack fixture (tests/fixtures/packs/mini) ---------------------------------
MINI_PACK = FIXTURES / "packs" / "mini"
MINI_ORG = MINI_PACK / "orgs" / "example"


@pytest.fixture
def mini_directory() -> Directory:
    return Directory.load(MINI_ORG / "directory.yaml")


@pytest.fixture
def mini_engine(settings, mini_directory):
    """An engine with the mini pack applied for its example organisation."""
    from itsmflow.engine.core import Engine

    eng = Engine(settings, mini_directory)
    eng.packs.apply(MINI_PACK, MINI_ORG)
    yield eng
    eng.close()


@pytest.fixture
def mini_client(mini_engine):
    from fastapi.testclient import TestClient

    from itsmflow.api.app import create_app

    with TestClient(create_app(mini_engine)) as client:
        yield client
