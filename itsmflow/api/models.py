"""Request and response bodies of the HTTP API (pydantic; JSON field names are camelCase).

Response models are built from the engine's view objects (``*.as_dict()``); every datetime is
rendered as an ISO 8601 UTC timestamp (naive values from SQLite are UTC).
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]

# Text that may reach a database column: printable (no control characters, which PostgreSQL refuses
# in part) and bounded by the column size.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Name255 = Annotated[str, Field(min_length=1, max_length=255, pattern=_PRINTABLE)]
# Query filters and path ids: same rule; anything longer than any stored value simply matches nothing.
Ident = Annotated[str, Field(min_length=1, max_length=255, pattern=_PRINTABLE)]


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class RequestModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# -- enums ----------------------------------------------------------------------------------
class InstanceState(str, Enum):
    active = "active"
    suspended = "suspended"
    completed = "completed"
    terminated = "terminated"


class TaskState(str, Enum):
    open = "open"
    completed = "completed"
    cancelled = "cancelled"


class TaskPhase(str, Enum):
    work = "work"
    signoff = "signoff"


# -- misc -----------------------------------------------------------------------------------
class Health(ApiModel):
    status: str = Field(examples=["ok"])
    db: str = Field(description="database kind", examples=["sqlite", "postgresql"])


class Me(ApiModel):
    user_id: str
    name: str
    roles: list[str]


class FieldError(ApiModel):
    path: str
    message: str


class SourceError(ApiModel):
    file: str
    line: int | None = None
    column: int | None = None
    message: str


class Problem(ApiModel):
    """RFC 9457 problem details; ``errors`` lists located problems when there are any."""

    model_config = ConfigDict(extra="allow")
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | list[SourceError] | None = None


# -- repository -----------------------------------------------------------------------------
class DeployedDefinition(ApiModel):
    id: str
    key: str
    version: int
    name: str | None = None


class DeploymentOut(ApiModel):
    id: str
    name: str
    definitions: list[DeployedDefinition]


class Definition(ApiModel):
    id: str
    key: str
    version: int
    name: str | None = None
    deployment_id: str
    resource: str = Field(description="name of the uploaded file that defines this version")


class Form(ApiModel):
    form_schema: dict[str, Any] = Field(alias="schema", description="JSON Schema of the form data")
    ui_schema: dict[str, Any] | None = None


class TaskForm(Form):
    data: dict[str, Any] = Field(description="current values visible to the task")


# -- runtime --------------------------------------------------------------------------------
class Activity(ApiModel):
    activity_id: str
    name: str | None = None
    type: str | None = None
    state: str | None = None


class IncidentOut(ApiModel):
    id: str
    process_instance_id: str
    activity_id: str | None = None
    message: str
    created_at: UtcDatetime
    state: str = "open"


class Instance(ApiModel):
    id: str
    definition_id: str
    definition_key: str
    version: int
    business_key: str | None = None
    state: InstanceState
    variables: dict[str, Any]
    active_activities: list[Activity]
    incidents: list[IncidentOut]
    started_at: UtcDatetime
    ended_at: UtcDatetime | None = None
    started_by: str | None = None
    end_reason: str | None = None


class StartRequest(RequestModel):
    business_key: Name255 | None = None
    variables: dict[str, Any] | None = None


class TerminateRequest(RequestModel):
    reason: Annotated[str, Field(min_length=1, max_length=4000, pattern=r"^[^\x00]*$")]


class HistoryEvent(ApiModel):
    seq: int
    at: UtcDatetime
    actor: str | None = None
    type: str
    activity_id: str | None = None
    task_id: str | None = None
    data: dict[str, Any]
    hash: str
    prev_hash: str


# -- tasks ----------------------------------------------------------------------------------
class Task(ApiModel):
    id: str
    name: str | None = None
    task_definition_key: str
    process_instance_id: str
    business_key: str | None = None
    definition_key: str
    definition_id: str
    lane: str | None = None
    candidate_roles: list[str]
    candidate_users: list[str]
    assignee: str | None = None
    owner: str | None = Field(default=None, description="who delegated the task and stays accountable")
    state: TaskState
    created_at: UtcDatetime
    due: UtcDatetime | None = None
    form_key: str | None = None
    completed_at: UtcDatetime | None = None
    completed_by: str | None = None
    phase: TaskPhase = Field(default="work", description="`signoff` once the result was submitted and waits for "
                                                         "the accountable role (candidateRoles) to sign it off")
    submitted_by: str | None = Field(default=None, description="who submitted the result waiting for sign-off")


class DelegateRequest(RequestModel):
    user_id: Name255


class CompleteRequest(RequestModel):
    variables: dict[str, Any] | None = None


class Completion(ApiModel):
    process_instance: Instance
    next_tasks: list[Task] = Field(description="open tasks of the instance the caller may work on")
    awaiting_signoff: bool = Field(default=False, description="the task needs a sign-off: the result was stored and "
                                                              "the task now waits for the accountable role")


class SignoffDecision(str, Enum):
    approved = "approved"
    rejected = "rejected"


class SignoffRequest(RequestModel):
    decision: SignoffDecision
    reason: Annotated[str, Field(max_length=4000, pattern=r"^[^\x00]*$")] | None = Field(
        default=None, description="required when rejected")


class ConsultationRequest(RequestModel):
    opinion: Annotated[str, Field(min_length=1, max_length=4000, pattern=r"^[^\x00]*$")]
    role: Name255 | None = Field(default=None, description="the consulted role the opinion is for (default: every "
                                                           "consulted role the caller holds)")


class ConsultationOut(ApiModel):
    id: str
    task_id: str
    process_instance_id: str
    role: str
    user_id: str
    opinion: str
    at: UtcDatetime


# -- notifications and packs --------------------------------------------------------------------
class NotificationOut(ApiModel):
    id: str
    at: UtcDatetime
    type: str = Field(description="task_created | task_completed | signoff_rejected")
    user_id: str
    process_instance_id: str | None = None
    task_id: str | None = None
    activity_id: str | None = None
    definition_key: str | None = None
    business_key: str | None = None
    message: str
    read: bool
    delivery_state: str = Field(description="webhook delivery: none | pending | delivered | failed")


class PackDefinitionOut(ApiModel):
    key: str
    version: int
    id: str


class PackOut(ApiModel):
    id: str
    name: str
    version: str
    organisation: str | None = None
    title: str | None = None
    applied_at: UtcDatetime
    applied_by: str | None = None
    definitions: list[PackDefinitionOut]
    tailoring: dict[str, Any] | None = Field(
        default=None, description="What the organisation's tailoring (ORG_DIR/tailoring.yaml, docs/tailoring.md) "
        "changes against the pack: file, sha256, basedOn, roles (pack role -> organisation role), extraRoles, "
        "policies, processesRenamed, tasksRenamed, processesDisabled, processesReplaced, raci, sod, formsAdded, "
        "formsReplaced; null when the pack was applied without a tailoring")


# -- messages, signals, incidents -------------------------------------------------------------
class MessageRequest(RequestModel):
    message_name: Name255
    business_key: Name255 | None = None
    correlation_keys: dict[str, Any] | None = Field(
        default=None, description="values of the message's BPMN correlation properties, by property id")
    variables: dict[str, Any] | None = None
    message_id: Name255 | None = Field(default=None, description="idempotency key: a repeat has no further effect")
    ttl_seconds: Annotated[int, Field(ge=0, le=31_536_000)] | None = Field(
        default=None, description="buffer the message this long when nothing waits for it yet")


class Correlated(ApiModel):
    process_instance_id: str
    activity_id: str | None = None


class MessageResult(ApiModel):
    correlated: list[Correlated] = Field(default_factory=list)
    started: list[str] = Field(default_factory=list)
    duplicate: bool = False


class MessageBuffered(ApiModel):
    buffered: bool = True
    expires_at: UtcDatetime
    duplicate: bool = False


class SignalRequest(RequestModel):
    name: Name255
    variables: dict[str, Any] | None = None


class SignalResult(ApiModel):
    triggered: int


class RetryRequest(RequestModel):
    variables: dict[str, Any] | None = Field(
        default=None, description="corrected variables given to the failed step before it runs again")
