"""``itsmflow serve``: load the directory, open the engine, deploy the default pack, run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from fastapi import FastAPI

from .engine.core import Engine
from .engine.directory import Directory
from .engine.errors import InvalidRequest
from .engine.packs import MANIFEST
from .engine.tailoring import TAILORING_FILE
from .settings import Settings

log = logging.getLogger("itsmflow.server")

EXAMPLE_DIRECTORY = Path("orgs") / "example" / "directory.yaml"


def directory_path(settings: Settings) -> Path:
    if settings.directory:
        return Path(settings.directory)
    return Path(settings.packs_dir) / settings.default_pack_name / EXAMPLE_DIRECTORY


def load_directory(settings: Settings) -> Directory:
    path = directory_path(settings)
    if not path.is_file():
        raise InvalidRequest(f"directory file {path} does not exist (give one with --directory or ITSMFLOW_DIRECTORY)")
    return Directory.load(path)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``; everything else (including 0.0.0.0 and names) is not."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, directory: Directory) -> None:
    """Refuse to listen beyond this machine while the shipped demo tokens still work."""
    if directory.has_demo_tokens and not is_loopback(settings.host):
        raise InvalidRequest(
            f"refusing to listen on {settings.host}: the directory {directory.source} contains demo tokens "
            "(users marked 'demo: true'). Listen on 127.0.0.1, or give a directory with your own tokens "
            "(--directory FILE) before exposing the server."
        )


def organisation_dir(settings: Settings) -> Path:
    """The organisation the default pack is applied for: the directory file's own organisation folder when
    it has a tailoring (``--directory process_packs/iso20000/orgs/northwind/directory.yaml`` serves
    Northwind's tailoring, docs/tailoring.md), else the pack's example organisation."""
    if settings.directory:
        folder = Path(settings.directory).resolve().parent
        if (folder / TAILORING_FILE).is_file():
            return folder
    return Path(settings.packs_dir) / settings.default_pack_name / "orgs" / "example"


def deploy_default_pack(engine: Engine, settings: Settings) -> None:
    """Apply the default process pack (``packs_dir/<default_pack_name>``) for the organisation of
    :func:`organisation_dir` (its example organisation unless the directory file belongs to a tailored one).

    Idempotent: applying the same content again deploys nothing. A missing pack, or a pack without
    processes yet, is skipped with a log line; an invalid pack is an error (the server does not start).
    """
    pack_dir = Path(settings.packs_dir) / settings.default_pack_name
    if not (pack_dir / MANIFEST).is_file():
        log.info("default pack: no %s in %s; nothing deployed", MANIFEST, pack_dir)
        return
    org_dir = organisation_dir(settings)
    result = engine.packs.apply(pack_dir, org_dir if org_dir.is_dir() else None, actor="system")
    if not result.definitions:
        log.info("default pack %s %s has no processes yet; nothing deployed", result.name, result.version)
        return
    for d in result.definitions:
        log.info("default pack %s %s (%s): %s version %s%s", result.name, result.version, result.organisation,
                 d.key, d.version, "" if result.created else " (unchanged)")


def open_engine(settings: Settings) -> Engine:
    directory = load_directory(settings)
    check_exposure(settings, directory)
    engine = Engine(settings, directory)
    try:
        if settings.default_pack:
            deploy_default_pack(engine, settings)
    except BaseException:
        engine.close()
        raise
    return engine


def build_app(settings: Settings) -> FastAPI:
    """The app ``serve`` runs (directory, exposure check, default pack); the engine is in ``app.state``."""
    from .api.app import create_app

    return create_app(open_engine(settings))


def run_server(settings: Settings) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per poll otherwise
    app = build_app(settings)
    try:
        app.state.engine.start_background_jobs()  # timers, retries, message redelivery
        log.info("itsmflow API on http://%s:%s (db: %s)", settings.host, settings.port, app.state.engine.db_kind)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
    finally:
        app.state.engine.close()
