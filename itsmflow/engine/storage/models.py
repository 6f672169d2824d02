"""SQLAlchemy 2.0 typed models: the durable state of the engine.

Definitions (what a process is) live in ``deployment``, ``deployment_resource`` and
``process_definition``; instances (what a process is doing) in ``process_instance`` and
``human_task``. The parsed spec is stored once per definition version; an instance snapshot
never contains it.

Schema changes go through Alembic (``migrations/versions``); keep both in step.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Deployment(Base):
    __tablename__ = "deployment"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(64), default="api")
    deployed_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeploymentResource(Base):
    """An uploaded file, kept byte-for-byte."""

    __tablename__ = "deployment_resource"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployment.id"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class ProcessDefinition(Base):
    """One version of one process key. Immutable once written."""

    __tablename__ = "process_definition"
    __table_args__ = (UniqueConstraint("key", "version", name="uq_definition_key_version"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # "<key>:<version>:<short uuid>"
    key: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(512))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployment.id"), index=True)
    resource_id: Mapped[str] = mapped_column(ForeignKey("deployment_resource.id"))
    resource_name: Mapped[str] = mapped_column(String(512))
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    spec_json: Mapped[str] = mapped_column(Text)
    model_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProcessInstance(Base):
    __tablename__ = "process_instance"
    __table_args__ = (
        # business key unique among *running* instances of the same definition key
        Index(
            "uq_running_business_key",
            "definition_key",
            "business_key",
            unique=True,
            sqlite_where=text("state IN ('active','suspended') AND business_key IS NOT NULL"),
            postgresql_where=text("state IN ('active','suspended') AND business_key IS NOT NULL"),
        ),
        Index("ix_instance_state_key", "state", "definition_key"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    definition_id: Mapped[str] = mapped_column(ForeignKey("process_definition.id"), index=True)
    definition_key: Mapped[str] = mapped_column(String(255))
    definition_version: Mapped[int] = mapped_column(Integer)
    business_key: Mapped[str | None] = mapped_column(String(255), index=True)
    state: Mapped[str] = mapped_column(String(16))  # active | suspended | completed | terminated
    # optimistic locking: every write is "UPDATE ... WHERE version = :expected"
    version: Mapped[int] = mapped_column(Integer, default=1)
    snapshot: Mapped[str] = mapped_column(Text)  # SpiffWorkflow serialization without the spec
    # head of the audit chain (last seq and hash): lets verify() detect a truncated trail too
    audit_seq: Mapped[int] = mapped_column(Integer, default=0)
    audit_head: Mapped[str | None] = mapped_column(String(64))
    variables_json: Mapped[str] = mapped_column(Text, default="{}")
    activities_json: Mapped[str] = mapped_column(Text, default="[]")
    started_by: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(Text)


class HumanTask(Base):
    """One row per user/manual task reached by an instance: the inbox never deserializes instances."""

    __tablename__ = "human_task"
    __table_args__ = (
        Index("ix_task_state_created", "state", "created_at"),
        Index("ix_task_instance_state", "instance_id", "state"),
        Index("ix_task_assignee_state", "assignee", "state"),
        Index("ix_task_def_key_state", "task_definition_key", "state"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # = SpiffWorkflow task id
    instance_id: Mapped[str] = mapped_column(ForeignKey("process_instance.id"))
    definition_id: Mapped[str] = mapped_column(String(255))
    definition_key: Mapped[str] = mapped_column(String(255))
    business_key: Mapped[str | None] = mapped_column(String(255))
    task_definition_key: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(512))
    lane: Mapped[str | None] = mapped_column(String(255))
    candidate_roles_json: Mapped[str] = mapped_column(Text, default="[]")
    candidate_users_json: Mapped[str] = mapped_column(Text, default="[]")
    assignee: Mapped[str | None] = mapped_column(String(255))
    owner: Mapped[str | None] = mapped_column(String(255))  # delegation: the accountable original assignee
    state: Mapped[str] = mapped_column(String(16))  # open | completed | cancelled
    form_key: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_by: Mapped[str | None] = mapped_column(String(255))
    # sign-off (RACI accountable): "work" while the responsible works on it, "signoff" once the result
    # was submitted and waits for the accountable role; the submission is kept in pending_json
    phase: Mapped[str] = mapped_column(String(16), default="work", server_default="work")
    pending_json: Mapped[str | None] = mapped_column(Text)
    submitted_by: Mapped[str | None] = mapped_column(String(255))


class TaskCandidate(Base):
    """Who may work on a task, one row per (task, role|user): the inbox query is an indexed join."""

    __tablename__ = "task_candidate"
    __table_args__ = (Index("ix_candidate_lookup", "kind", "value", "task_id"),)

    task_id: Mapped[str] = mapped_column(ForeignKey("human_task.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # role | user
    value: Mapped[str] = mapped_column(String(255), primary_key=True)


class HistoryEvent(Base):
    """Append-only audit trail; each row carries the hash of the previous row of its scope."""

    __tablename__ = "history_event"
    __table_args__ = (UniqueConstraint("scope", "seq", name="uq_history_scope_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(64))  # process instance id, or "repository"
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str | None] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(64))
    activity_id: Mapped[str | None] = mapped_column(String(255))
    task_id: Mapped[str | None] = mapped_column(String(36))
    data_json: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Incident(Base):
    """A failure the engine could not get past on its own (script error, sandbox refusal...)."""

    __tablename__ = "incident"
    __table_args__ = (Index("ix_incident_instance_state", "instance_id", "state"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("process_instance.id"))
    activity_id: Mapped[str | None] = mapped_column(String(255))
    spiff_task_id: Mapped[str | None] = mapped_column(String(36))
    incident_type: Mapped[str] = mapped_column(String(64), default="failedTask")
    message: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | resolved
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EventSubscription(Base):
    """What an instance waits for (message / signal catch events), or what starts a definition.

    Routing a message is an indexed lookup on ``(event_type, event_name, correlation_key)`` or
    ``business_key``; no instance is loaded to find its receivers.
    """

    __tablename__ = "event_subscription"
    __table_args__ = (
        Index("ix_subscription_route", "event_type", "event_name", "correlation_key"),
        Index("ix_subscription_bk", "event_type", "event_name", "business_key"),
        Index("ix_subscription_instance", "instance_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(16))  # message | signal
    event_name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(8))  # catch (a waiting instance) | start (a definition)
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("process_instance.id", ondelete="CASCADE"))
    definition_id: Mapped[str | None] = mapped_column(String(255))
    definition_key: Mapped[str | None] = mapped_column(String(255))
    spiff_task_id: Mapped[str | None] = mapped_column(String(36))
    activity_id: Mapped[str | None] = mapped_column(String(255))
    business_key: Mapped[str | None] = mapped_column(String(255))
    correlation_key: Mapped[str | None] = mapped_column(String(64))  # sha256 of canonical correlation values
    correlation_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BufferedMessage(Base):
    """A message nobody waited for yet, kept until ``expires_at`` (``ttlSeconds``)."""

    __tablename__ = "buffered_message"
    __table_args__ = (Index("ix_buffered_name_exp", "message_name", "expires_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    message_name: Mapped[str] = mapped_column(String(255))
    message_id: Mapped[str | None] = mapped_column(String(255))
    business_key: Mapped[str | None] = mapped_column(String(255))
    correlation_key: Mapped[str | None] = mapped_column(String(64))
    correlation_json: Mapped[str | None] = mapped_column(Text)
    variables_json: Mapped[str] = mapped_column(Text, default="{}")
    source: Mapped[str | None] = mapped_column(String(255))  # sending instance id, or "api"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MessageReceipt(Base):
    """Idempotency: the outcome of a correlated ``messageId``; a repeat returns it unchanged."""

    __tablename__ = "message_receipt"

    message_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    message_name: Mapped[str] = mapped_column(String(255))
    result_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """Durable work with a due time: timers, retries of failed steps, message deliveries.

    Any number of processes may run the job executor: a job is acquired by a short locking
    transaction and deleted in the same transaction that applies its effect, so it takes
    effect exactly once.
    """

    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_due", "due_at"),
        Index("ix_job_instance", "instance_id", "job_type"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_type: Mapped[str] = mapped_column(String(16))  # timer | timer-start | retry | message | signal | webhook
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("process_instance.id", ondelete="CASCADE"))
    definition_id: Mapped[str | None] = mapped_column(String(255))
    spiff_task_id: Mapped[str | None] = mapped_column(String(36))
    activity_id: Mapped[str | None] = mapped_column(String(255))
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload_json: Mapped[str] = mapped_column(Text, default="{}")
    retries_left: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# -- process packs ----------------------------------------------------------------------------------
class Pack(Base):
    """A process pack applied to this database (one row per distinct content per organisation)."""

    __tablename__ = "pack"
    __table_args__ = (
        UniqueConstraint("name", "organisation", "content_hash", name="uq_pack_content"),
        Index("ix_pack_name_created", "name", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(64))
    organisation: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str | None] = mapped_column(String(512))
    content_hash: Mapped[str] = mapped_column(String(64))
    manifest_json: Mapped[str] = mapped_column(Text)  # roles, processes, raci, sod, policies, interfaces
    applied_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PackDefinition(Base):
    """Which definition versions a pack application consists of."""

    __tablename__ = "pack_definition"

    pack_id: Mapped[str] = mapped_column(ForeignKey("pack.id", ondelete="CASCADE"), primary_key=True)
    definition_id: Mapped[str] = mapped_column(ForeignKey("process_definition.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)


class DefinitionRules(Base):
    """The pack rules (RACI, SoD, forms, policies) deployed with one definition version. Immutable:
    running instances keep the rules of the version they started on."""

    __tablename__ = "definition_rules"

    definition_id: Mapped[str] = mapped_column(ForeignKey("process_definition.id"), primary_key=True)
    pack_name: Mapped[str] = mapped_column(String(255))
    pack_version: Mapped[str] = mapped_column(String(64))
    rules_json: Mapped[str] = mapped_column(Text)
    rules_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Notification(Base):
    """Outbox of notifications for users (RACI informed); optionally delivered to a webhook."""

    __tablename__ = "notification"
    __table_args__ = (Index("ix_notification_user", "user_id", "read", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(32))  # task_created | task_completed | signoff_rejected
    instance_id: Mapped[str | None] = mapped_column(String(36), index=True)
    task_id: Mapped[str | None] = mapped_column(String(36))
    activity_id: Mapped[str | None] = mapped_column(String(255))
    definition_key: Mapped[str | None] = mapped_column(String(255))
    business_key: Mapped[str | None] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    read: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivery_state: Mapped[str] = mapped_column(String(16), default="none")  # none | pending | delivered | failed
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)


class Consultation(Base):
    """An opinion recorded on a task by a holder of a RACI consulted role."""

    __tablename__ = "consultation"
    __table_args__ = (Index("ix_consultation_task", "task_id", "role"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("human_task.id", ondelete="CASCADE"))
    instance_id: Mapped[str] = mapped_column(String(36))
    role: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    opinion: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
