"""All configuration of itsmflow in one place (pydantic-settings).

Every value can come from the command line (the CLI builds a ``Settings`` with overrides),
from ``ITSMFLOW_*`` environment variables, or from the defaults below.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ITSMFLOW_", extra="ignore")

    data_dir: Path = Field(default=Path(".itsmflow"), description="where the embedded SQLite database lives")
    db: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite under data_dir")
    directory: Path | None = Field(default=None, description="YAML directory file (users, roles, tokens)")
    host: str = "127.0.0.1"
    port: int = 8080
    default_pack: bool = True
    packs_dir: Path = REPO_ROOT / "process_packs"
    default_pack_name: str = "iso20000"  # serve applies packs_dir/<this> with its orgs/example organisation
    pack_schema: Path = REPO_ROOT / "process_packs" / "pack.schema.json"  # JSON Schema of pack.yaml

    # notifications (RACI informed): optional webhook delivery by the job executor
    notification_webhook_url: str | None = None
    notification_webhook_secret: str | None = None  # signs the body: X-Itsmflow-Signature: sha256=<hmac>
    webhook_timeout_seconds: float = 5.0
    webhook_max_attempts: int = 5

    # limits applied to untrusted input
    max_bpmn_bytes: int = 5 * 1024 * 1024
    sandbox_cpu_seconds: float = 1.0
    max_variables_bytes: int = 1024 * 1024

    # job executor (timers, retries, message redelivery)
    job_poll_seconds: float = 0.5
    job_lock_seconds: int = 60
    default_retries: int = 3  # a failing step is retried this often before it becomes an incident
    default_retry_interval_seconds: float = 10.0  # per activity: camunda:failedJobRetryTimeCycle "R3/PT10S"
    default_message_ttl_seconds: int = 3600  # how long a thrown message nobody waits for is kept

    @property
    def db_url(self) -> str:
        if self.db:
            return self.db
        return f"sqlite:///{(self.data_dir / 'itsmflow.db').resolve()}"

    @property
    def db_kind(self) -> str:
        return "postgresql" if self.db_url.startswith("postgresql") else "sqlite"
