"""The ``itsmflow`` command line (see docs/cli.md and the contract)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .engine.errors import DeploymentInvalid, EngineError
from .settings import Settings

app = typer.Typer(help="itsmflow: a durable BPMN engine with ISO/IEC 20000 process packs", no_args_is_help=True)
pack_app = typer.Typer(help="deploy and compare process packs", no_args_is_help=True)
app.add_typer(pack_app, name="pack")
out = Console()
err = Console(stderr=True)

DbOpt = typer.Option(None, "--db", help="SQLAlchemy URL (default: SQLite under --data-dir); env ITSMFLOW_DB")
DataDirOpt = typer.Option(None, "--data-dir", help="data directory (default ./.itsmflow); env ITSMFLOW_DATA_DIR")
DirectoryOpt = typer.Option(None, "--directory", help="directory file with users, roles, tokens; env ITSMFLOW_DIRECTORY")

DEPLOYABLE = (".bpmn", ".dmn", ".bpmn20.xml")


def _settings(db: Optional[str] = None, data_dir: Optional[Path] = None, directory: Optional[Path] = None,
              **extra) -> Settings:
    overrides = {k: v for k, v in dict(db=db, data_dir=data_dir, directory=directory, **extra).items() if v is not None}
    return Settings(**overrides)


def collect_files(paths: list[Path]) -> list[tuple[str, bytes]]:
    """BPMN/DMN files named directly or found (recursively) under the given directories."""
    files: list[tuple[str, bytes]] = []
    for path in paths:
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.name.lower().endswith(DEPLOYABLE):
                    files.append((str(f.relative_to(path)), f.read_bytes()))
        elif path.is_file():
            files.append((path.name, path.read_bytes()))
        else:
            raise typer.BadParameter(f"{path}: no such file or directory")
    return files


@app.command()
def validate(paths: list[Path] = typer.Argument(..., help="BPMN/DMN files or directories")) -> None:
    """Parse and check files; print file:line:column: message for every problem (exit 1 on error)."""
    from .engine.bpmn.parsing import parse_deployment
    from .engine.sandbox import check_expression

    settings = Settings()
    files = collect_files(paths)
    if not files:
        err.print("no BPMN or DMN files found")
        raise typer.Exit(1)
    try:
        parsed = parse_deployment(files, max_bytes=settings.max_bpmn_bytes, script_validator=check_expression)
    except DeploymentInvalid as exc:
        issues = list(exc.issues)
        # parsing stops at the first stage with errors; check the files it did not blame on their own
        blamed = {i.file for i in issues}
        for name, data in files:
            if name in blamed:
                continue
            try:
                parse_deployment([(name, data)], max_bytes=settings.max_bpmn_bytes, script_validator=check_expression)
            except DeploymentInvalid as single:
                issues.extend(i for i in single.issues if i not in issues)
        for issue in issues:
            print(str(issue))
        raise typer.Exit(1)
    for key, model in parsed.processes.items():
        out.print(f"{model.file}: process [bold]{key}[/bold] ok")
    for key in parsed.non_executable:
        out.print(f"process {key}: parsed, not executable (isExecutable is not true)")


@app.command()
def deploy(
    paths: list[Path] = typer.Argument(..., help="BPMN/DMN files or directories"),
    name: Optional[str] = typer.Option(None, "--name", help="deployment name"),
    db: Optional[str] = DbOpt,
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Deploy files into the database given by --db."""
    from .engine.core import Engine

    files = collect_files(paths)
    engine = Engine(_settings(db, data_dir))
    try:
        result = engine.repository.deploy(name or ", ".join(str(p) for p in paths), files, actor="cli", source="cli")
    except DeploymentInvalid as exc:
        for issue in exc.issues:
            print(str(issue))
        raise typer.Exit(1)
    finally:
        engine.close()
    for d in result.definitions:
        out.print(f"{d.key} version {d.version} ({d.id})")
    if not result.created:
        out.print("unchanged: identical content was already deployed")


@pack_app.command("apply")
def pack_apply(
    pack_dir: Path = typer.Argument(..., help="pack directory (holds pack.yaml)"),
    org: Optional[Path] = typer.Option(None, "--org", help="organisation directory (e.g. PACK/orgs/example)"),
    db: Optional[str] = DbOpt,
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Check and deploy a process pack (BPMN, forms, RACI, SoD, policies) for an organisation."""
    from .engine.core import Engine

    engine = Engine(_settings(db, data_dir))
    try:
        result = engine.packs.apply(pack_dir, org, actor="cli")
    except DeploymentInvalid as exc:
        for issue in exc.issues:
            print(str(issue))
        raise typer.Exit(1)
    finally:
        engine.close()
    if result.tailoring is not None:
        out.print(f"tailoring {result.tailoring['file']} (organisation {result.organisation})", highlight=False)
    for d in result.definitions:
        state = "new version" if d.key in result.new_versions else "unchanged"
        out.print(f"{d.key} version {d.version} ({d.id}) {state}", highlight=False)
    for w in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if not result.created:
        out.print(f"unchanged: pack {result.name} {result.version} was already applied")


@pack_app.command("diff")
def pack_diff(
    pack_dir: Path = typer.Argument(..., help="pack directory (holds pack.yaml)"),
    org: Optional[Path] = typer.Option(None, "--org", help="organisation directory: show what its tailoring.yaml "
                                       "changes (alone: against the pack as it is)"),
    against: Optional[Path] = typer.Option(None, "--against", help="another version of the pack (directory): show "
                                           "what changes from it to PACK_DIR (tailored for --org on both sides)"),
) -> None:
    """What a tailoring changes against its pack, or what changes between two pack versions (readable text)."""
    from .engine.packdiff import describe, diff
    from .engine.packs import load_pack
    from .engine.repository import RepositoryService
    from .engine.sandbox import check_expression
    from .engine.tailoring import TAILORING_FILE

    if org is None and against is None:
        err.print("nothing to compare: give --org ORG_DIR (the tailoring against the pack) and/or --against "
                  "OTHER_PACK_DIR (two pack versions)")
        raise typer.Exit(2)
    if org is not None and not (org / TAILORING_FILE).is_file() and against is None:
        err.print(f"{org / TAILORING_FILE}: no tailoring: the organisation uses the pack as it is")
    settings = Settings()
    repository = RepositoryService(None, None, max_bytes=settings.max_bpmn_bytes,  # validation only: no database
                                   script_validator=check_expression)

    def load(directory: Path, org_dir: Optional[Path]):  # noqa: ANN202
        return load_pack(directory, schema_path=settings.pack_schema, repository=repository, org_dir=org_dir)

    try:
        if against is None:
            old, new = load(pack_dir, None), load(pack_dir, org)
            old_label = f"pack {old.name} {old.version} ({pack_dir})"
            new_label = f"tailored for {org} ({new.tailoring['file'] if new.tailoring else 'no tailoring.yaml'})"
            tags = ("pack", "tailored")
        else:
            old, new = load(against, org), load(pack_dir, org)
            suffix = f", tailored for {org}" if org is not None else ""
            old_label = f"pack {old.name} {old.version} ({against}{suffix})"
            new_label = f"pack {new.name} {new.version} ({pack_dir}{suffix})"
            tags = (old.version, new.version) if old.version != new.version else ("against", "pack")
    except DeploymentInvalid as exc:
        for issue in exc.issues:
            print(str(issue))
        raise typer.Exit(1)
    sys.stdout.write(diff(describe(old), describe(new), old_label=old_label, new_label=new_label,
                          old_tag=tags[0], new_tag=tags[1]))


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port"),
    db: Optional[str] = DbOpt,
    directory: Optional[Path] = DirectoryOpt,
    data_dir: Optional[Path] = DataDirOpt,
    no_default_pack: bool = typer.Option(False, "--no-default-pack", help="do not deploy the ISO 20000 pack"),
) -> None:
    """Start the HTTP API (uvicorn) over the database."""
    from .server import run_server

    settings = _settings(db, data_dir, directory, host=host, port=port,
                         default_pack=False if no_default_pack else None)
    try:
        run_server(settings)
    except EngineError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(2)


@app.command()
def demo() -> None:
    """Run a full normal change end to end against a temporary database, printing progress."""
    from .demo import run_demo

    try:
        ok = run_demo(out)
    except EngineError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(2)
    if not ok:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
