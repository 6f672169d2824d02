"""``itsmflow demo``: one normal change of the ISO/IEC 20000 pack, from RFC to closure, on a temporary database.

The engine is opened as ``itsmflow serve`` opens it (``server.open_engine``: the example organisation's
directory, the ISO 20000 pack applied with it), and the change is walked through the engine services as the
demo users the pack's RACI makes responsible. Each step is printed with who did it; two refusals show the
rules at work (a required consultation, segregation of duties). The end is the audit trail's summary and the
verification of its hash chain. ``run_demo`` returns True when the change closed and the chain verified.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .engine.core import Engine
from .engine.errors import EngineError
from .settings import Settings

BUSINESS_KEY = "RFC-DEMO-1"

RFC: dict[str, Any] = {
    "summary": "Upgrade the mail gateway to 10.2",
    "description": "Replace the mail gateway software on both nodes, one node at a time.",
    "purpose": "Vendor support for 9.x ends; 10.2 fixes the spam filter bypass.",
    "affectedServices": ["mail"],
    "affectedCis": [{"ciId": "mailgw-01", "ciType": "application", "version": "9.8"},
                    {"ciId": "mailgw-02", "ciType": "application", "version": "9.8"}],
    "impactedCustomers": ["All business units"],
    "impactedUsers": {"count": 1200, "locations": ["Head office"]},
    "requestedPriority": "medium",
    "initialRisk": "medium",
    "impactDescription": "Mail delivery is delayed by a few minutes while each node restarts.",
    "estimatedCost": 4000,
    "backOutPlan": {"approach": "reverse", "steps": "Reinstall 9.8 from the saved package and restore the "
                                                    "configuration backup.", "tested": True},
}


def demo_settings(tmp: Path, db_url: str | None = None) -> Settings:
    """Settings for the demo: its own database (a SQLite file in ``tmp`` unless ``db_url`` is given), the
    example organisation, the default pack; never the environment's database or directory."""
    base = Settings(default_pack=True)
    return Settings(
        db=db_url or f"sqlite:///{(tmp / 'demo.db').resolve()}",
        data_dir=tmp,
        directory=Path(base.packs_dir) / base.default_pack_name / "orgs" / "example" / "directory.yaml",
        default_pack=True,
        host="127.0.0.1",
        notification_webhook_url=None,
    )


def free_window(policies: dict[str, Any], *, now: datetime | None = None) -> tuple[str, str]:
    """A two-hour evening window at least two weeks ahead that overlaps no freeze window of the policy."""

    def utc(value: str) -> datetime:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return at if at.tzinfo else at.replace(tzinfo=timezone.utc)

    now = now or datetime.now(timezone.utc)
    start = (now + timedelta(days=14)).replace(hour=20, minute=0, second=0, microsecond=0)
    windows = [(utc(w["start"]), utc(w["end"])) for w in policies["freeze_windows"]["windows"]]
    while any(start < end and start + timedelta(hours=2) > begin for begin, end in windows):
        start += timedelta(days=7)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return start.strftime(fmt), (start + timedelta(hours=2)).strftime(fmt)


class _Walk:
    def __init__(self, engine: Engine, console: Console) -> None:
        self.engine = engine
        self.console = console
        self.n = 0
        self.iid = ""

    def who(self, user_id: str, role: str) -> str:
        user = self.engine.directory.get(user_id)
        return f"[bold]{user.name}[/bold] ({user_id}, {role})" if user else user_id

    def say(self, text: str, user_id: str, role: str, detail: str = "") -> None:
        self.n += 1
        self.console.print(f"[cyan]{self.n:>2}.[/cyan] {text} — {self.who(user_id, role)}")
        if detail:
            self.note(detail)

    def note(self, text: str, style: str = "dim") -> None:
        """An indented line under a step (wrapped lines keep the indentation)."""
        self.console.print(Padding(Text(text, style=style), (0, 0, 0, 6)))

    def refused(self, text: str, exc: EngineError) -> None:
        self.console.print(f"    [yellow]✗ refused:[/yellow] {text}")
        self.note(exc.detail.split(" — ")[0])  # the reason, without the how-to that follows it

    def principal(self, user_id: str):
        return self.engine.directory.get(user_id).principal()

    def open_task(self, key: str):
        tasks, _ = self.engine.tasks.query(process_instance_id=self.iid, size=50)
        found = [t for t in tasks if t.task_definition_key == key]
        if len(found) != 1:
            raise RuntimeError(f"expected one open task {key!r}, found {[t.task_definition_key for t in tasks]}")
        return found[0]

    def work(self, key: str, user_id: str, role: str, values: dict[str, Any], detail: str = "") -> None:
        task = self.open_task(key)
        principal = self.principal(user_id)
        self.engine.tasks.claim(task.id, principal)
        self.engine.tasks.complete(task.id, principal, values)
        self.say(task.name or key, user_id, role, detail)

    def variables(self) -> dict[str, Any]:
        return self.engine.runtime.get(self.iid).variables


def walk_normal_change(engine: Engine, console: Console) -> str:
    """Raise one normal change and take it to closure; returns the instance id."""
    w = _Walk(engine, console)
    instance = engine.runtime.start("change_normal", business_key=BUSINESS_KEY, variables=RFC,
                                    principal=w.principal("alice"))
    w.iid = instance.id
    w.say(f"Raise RFC {BUSINESS_KEY}: {RFC['summary']}", "alice", "change-initiator",
          f"estimated cost {RFC['estimatedCost']} EUR, back-out plan: {RFC['backOutPlan']['approach']}")

    w.work("classify", "bob", "change-manager",
           {"category": "significant", "risk": "medium", "priority": "medium", "businessImpact": "medium"},
           "category significant, risk medium, priority medium")

    assessment = {"risk": "medium", "assessmentSummary": "Vendor-tested upgrade, one node at a time.",
                  "serviceImpact": "Short delays in mail delivery.", "technicalFeasibility": "feasible",
                  "securityControlsBypassed": False, "backOutPlanAdequate": True}
    assess = w.open_task("assess")
    bob = w.principal("bob")
    engine.tasks.claim(assess.id, bob)
    try:  # RACI: the configuration manager's opinion is required before the assessment is complete
        engine.tasks.complete(assess.id, bob, assessment)
        raise RuntimeError("the assessment completed without the configuration manager's opinion")
    except EngineError as exc:
        w.refused("bob completes the assessment first", exc)
    opinion = "Two CIs, no shared dependencies in the CMDB; no objection."
    engine.consultations.record(assess.id, w.principal("erin"), opinion)
    w.say("Give the configuration management opinion (consulted)", "erin", "configuration-manager", opinion)
    engine.tasks.complete(assess.id, bob, assessment)
    w.say(assess.name or "assess", "bob", "change-manager",
          f"risk medium → required authority: {w.variables()['required_authority']} (policy change_authority)")

    authorise = w.open_task("authorise")
    try:  # alice holds change-authority too, but raised this change
        engine.tasks.claim(authorise.id, w.principal("alice"))
        raise RuntimeError("the initiator could claim the authorisation of her own change")
    except EngineError as exc:
        w.refused("alice authorises her own change", exc)
    w.work("authorise", "carol", "change-authority", {"decision": "approved", "conditions": "Node 1 first."},
           "decision approved, conditions: Node 1 first.")

    start, end = free_window(w.variables()["policies"])
    w.work("schedule", "bob", "change-manager",
           {"plannedStart": start, "plannedEnd": end, "communicatedTo": ["service desk", "mail users"]},
           f"{start} → {end}")
    clash = w.variables().get("schedule_clash")
    if clash:
        raise RuntimeError(f"the planned window clashes with a freeze: {clash}")
    freezes = len(w.variables()["policies"]["freeze_windows"]["windows"])
    w.note(f"✓ no clash with the {freezes} freeze windows of policy freeze_windows", "green")

    w.work("build", "heidi", "change-builder", {"buildResult": "built", "buildSummary": "Packages staged."},
           "built to specification")
    w.work("test", "grace", "independent-tester",
           {"testResult": "passed", "testEvidence": "TP-17 run on staging.", "builtToSpecification": True,
            "verifiableDuringDeployment": True, "backOutTested": True}, "passed, back-out tested")
    w.work("confirm_window", "priya", "change-implementer", {"windowDecision": "proceed"}, "window still holds")
    w.work("deploy", "priya", "change-implementer",
           {"outcome": "successful", "implementationNotes": "Both nodes on 10.2, monitoring green."},
           "outcome successful → configuration_update sent to configuration management")
    w.work("pir", "bob", "change-manager",
           {"reviewOutcome": "objectives_met", "lessonsLearned": "Stage both nodes before the window.",
            "documentationComplete": True}, "objectives met, documentation complete")
    return w.iid


def print_trail(engine: Engine, console: Console, instance_id: str) -> bool:
    """The audit trail's summary and its hash-chain verification; True when the chain verifies."""
    events = engine.history.events(instance_id)
    console.print()
    console.print(f"[bold]Audit trail[/bold] of {events[0].at.strftime('%Y-%m-%d')}: {len(events)} events")
    console.print(Padding(Text(", ".join(f"{n} {t}" for t, n in sorted(Counter(e.type for e in events).items())),
                               style="dim"), (0, 0, 0, 2)))
    table = Table("seq", "at (UTC)", "who", "what", box=None, pad_edge=False)
    for e in events:
        if e.type not in ("process_started", "task_completed", "consultation_recorded", "message_thrown",
                          "process_completed"):
            continue
        what = e.type if e.activity_id is None else f"{e.type} {e.activity_id}"
        if e.type == "message_thrown":
            what += f" {e.data.get('name', '')}"
        decision = (e.data.get("changes") or {}).get("decision")
        if decision:
            what += f" (decision {decision['new']})"
        table.add_row(str(e.seq), e.at.strftime("%H:%M:%S.%f")[:-3], e.actor or "", what)
    console.print(table)
    [result] = engine.history.verify(instance_id)
    if result.ok:
        console.print(f"[green]✓ audit trail verified[/green]: {result.events} events, hash chain intact "
                      f"(head {events[-1].hash[:16]}…)")
    else:
        console.print(f"[red]✗ audit trail NOT verified[/red]: event {result.first_bad_seq}: {result.reason}")
    return result.ok


def run_demo(console: Console | None = None, *, db_url: str | None = None) -> bool:
    """Run the demo; True when the change reached closure and its audit trail verified."""
    from .server import open_engine

    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="itsmflow-demo-") as tmp:
        settings = demo_settings(Path(tmp), db_url)
        console.print(f"[bold]itsmflow demo[/bold]: a normal change of the ISO/IEC 20000 pack, end to end "
                      f"(database: {'temporary SQLite' if db_url is None else engine_kind(db_url)})")
        engine = open_engine(settings)
        try:
            packs = engine.packs.list()
            if packs:
                console.print(f"pack {packs[0].name} {packs[0].version} applied for organisation "
                              f"'{packs[0].organisation}' ({len(engine.directory.users)} demo users)")
            console.print()
            try:
                instance_id = walk_normal_change(engine, console)
            except (EngineError, RuntimeError) as exc:
                console.print(f"[red]✗ the change did not reach closure:[/red] {getattr(exc, 'detail', exc)}")
                return False
            instance = engine.runtime.get(instance_id)
            ended = {e.activity_id for e in engine.history.events(instance_id) if e.type == "activity_completed"}
            closed = instance.state == "completed" and "end_closed" in ended
            console.print()
            if closed:
                console.print(f"[green]✓ Change {instance.business_key} is closed[/green] (end event 'end_closed'; "
                              f"process instance state: {instance.state})")
            else:
                console.print(f"[red]✗ Change {instance.business_key} is not closed[/red] "
                              f"(process instance state: {instance.state})")
            verified = print_trail(engine, console, instance_id)
            return closed and verified
        finally:
            engine.close()


def engine_kind(db_url: str) -> str:
    return "postgresql" if db_url.startswith("postgresql") else "sqlite"
