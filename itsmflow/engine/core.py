"""The engine: one object wiring the services over one database.

```python
engine = Engine(Settings(db="sqlite:///x.db"), directory)
engine.repository.deploy("my files", [("p.bpmn", data)])
instance = engine.runtime.start("my_process", business_key="RFC-1")
inbox, total = engine.tasks.query(candidate_user="alice")
engine.tasks.complete(inbox[0].id, alice, {"decision": "approved"})
```

Several engines (processes) may share one PostgreSQL database: all state is in the database,
and the in-memory spec cache holds only immutable definitions.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text

from ..settings import Settings
from .directory import Directory
from .execution import Executor, RetryPolicy
from .history import HistoryService
from .jobs import IncidentService, JobExecutor, register_timer_starts
from .messages import MessageService, register_start_events
from .repository import RepositoryService, SpecCache
from .runtime import RuntimeService
from .storage.db import create_db_engine, migrate, session_factory
from .tasks import TaskService
from .consultation import ConsultationService
from .forms import FormService
from .notifications import WEBHOOK_JOB, NotificationService
from .packs import PackService
from .policies import PolicyInjector
from .raci import RaciAssignment, signoff_role
from .rules import RulesStore
from .schedule import ScheduleService
from .sod import SodChecker


class Engine:
    def __init__(self, settings: Settings | None = None, directory: Directory | None = None,
                 *, script_engine: Any = None) -> None:
        self.settings = settings or Settings()
        self.directory = directory or Directory()
        self.db = create_db_engine(self.settings.db_url)
        migrate(self.db)
        self.sessions = session_factory(self.db)
        self.specs = SpecCache(self.sessions)
        from .sandbox import SandboxedScriptEngine, SandboxEnvironment, SandboxLimits, check_expression

        self.rules = RulesStore(self.sessions)
        self.schedules = ScheduleService(self.sessions, self.rules)
        limits = SandboxLimits(cpu_seconds=self.settings.sandbox_cpu_seconds)
        # engine functions offered to every script and expression (data in, data out)
        self.script_engine = script_engine or SandboxedScriptEngine(environment=SandboxEnvironment(
            limits, environment_globals={"schedule_entries": self.schedules.script_function()}))
        self.executor = Executor(self.sessions, self.specs, self.script_engine, RetryPolicy(
            self.settings.default_retries, timedelta(seconds=self.settings.default_retry_interval_seconds)))
        self.repository = RepositoryService(
            self.sessions, self.specs, max_bytes=self.settings.max_bpmn_bytes, script_validator=check_expression
        )
        self.runtime = RuntimeService(
            self.sessions, self.repository, self.specs, self.executor,
            max_variables_bytes=self.settings.max_variables_bytes,
        )
        self.tasks = TaskService(
            self.sessions, self.executor, self.runtime, self.directory,
            max_variables_bytes=self.settings.max_variables_bytes,
        )
        self.history = HistoryService(self.sessions)
        self.repository.on_definition_created += [register_start_events, register_timer_starts]
        self.messages = MessageService(
            self.sessions, self.executor, self.specs,
            default_ttl_seconds=self.settings.default_message_ttl_seconds,
            max_variables_bytes=self.settings.max_variables_bytes,
        )
        self.incidents = IncidentService(self.sessions, self.executor)
        self.jobs = JobExecutor(
            self.sessions, self.executor, self.specs, self.messages.process_leased_job,
            lock_seconds=self.settings.job_lock_seconds, dialect=self.db.dialect.name,
        )
        self._install_pack_rules()

    def _install_pack_rules(self) -> None:
        """RACI, segregation of duties, consultation, sign-off, forms, policies and notifications: all
        driven by the rules a pack deployed with each definition version (no-ops without a pack)."""
        s = self.settings
        self.executor.assignment = RaciAssignment(self.rules, directory=self.directory)
        policies = PolicyInjector(self.rules)
        self.executor.start_variables.append(policies.start_variables)
        self.notifications = NotificationService(
            self.sessions, self.directory, self.rules, webhook_url=s.notification_webhook_url,
            webhook_secret=s.notification_webhook_secret, webhook_timeout_seconds=s.webhook_timeout_seconds,
            webhook_max_attempts=s.webhook_max_attempts,
        )
        self.executor.on_task_created.append(self.notifications.task_created)
        self.tasks.completion_listeners.append(self.notifications.task_completed)
        self.tasks.signoff_rejected_listeners.append(self.notifications.signoff_rejected)
        self.jobs.handlers[WEBHOOK_JOB] = self.notifications.deliver
        self.consultations = ConsultationService(self.sessions, self.executor, self.tasks, self.rules)
        self.forms = FormService(self.repository, self.tasks, self.rules)
        self.tasks.actor_checks.append(SodChecker(self.rules))
        # order: consultations (409), reserved variables and the form (422)
        self.tasks.completion_checks += [self.consultations.completion_check, policies.completion_check,
                                         self.forms.completion_check]
        self.tasks.signoff_role = signoff_role(self.rules)
        self.runtime.start_checks += [policies.start_check, self.forms.start_check]
        self.packs = PackService(self.sessions, self.repository, self.rules, self.directory,
                                 schema_path=s.pack_schema)

    def start_background_jobs(self) -> None:
        """Run timers, retries and message redelivery in this process (``itsmflow serve`` does)."""
        self.jobs.start(self.settings.job_poll_seconds, housekeeping=self.messages.purge_expired)

    @property
    def db_kind(self) -> str:
        return self.db.dialect.name

    def ping(self) -> bool:
        with self.db.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    def close(self) -> None:
        self.jobs.stop()
        self.db.dispose()
