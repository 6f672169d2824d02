"""Named exceptions of the engine.

Every service raises one of these; the HTTP layer maps each class to one status code
(see ``itsmflow.api.problems``). Nothing else should leak out of ``itsmflow.engine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class EngineError(Exception):
    """Base class of every error the engine reports to its callers."""

    status = 500
    title = "Engine error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(EngineError):
    status = 404
    title = "Not found"


class Conflict(EngineError):
    """The resource is not in a state that allows the operation (or a concurrent writer won)."""

    status = 409
    title = "Conflict"


class Forbidden(EngineError):
    status = 403
    title = "Forbidden"


class InvalidRequest(EngineError):
    """A request that can never succeed as written (bad argument, unsupported value type...)."""

    status = 400
    title = "Bad request"


@dataclass(frozen=True)
class SourceIssue:
    """One problem in an uploaded file, located as precisely as we can."""

    file: str
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line or 0}:{self.column or 0}: {self.message}"

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "column": self.column, "message": self.message}


class DeploymentInvalid(EngineError):
    """Uploaded BPMN/DMN files were refused; ``issues`` lists every problem found."""

    status = 400
    title = "Invalid deployment"

    def __init__(self, issues: list[SourceIssue]) -> None:
        self.issues = list(issues)
        super().__init__("; ".join(str(i) for i in self.issues[:20]) or "invalid deployment")


@dataclass(frozen=True)
class FieldIssue:
    path: str
    message: str

    def as_dict(self) -> dict:
        return {"path": self.path, "message": self.message}


class ValidationFailed(EngineError):
    """Submitted data failed validation (form schema, variable types); nothing was changed."""

    status = 422
    title = "Validation failed"

    def __init__(self, detail: str, errors: list[FieldIssue] | None = None) -> None:
        super().__init__(detail)
        self.errors = list(errors or [])


class SandboxViolation(EngineError):
    """An expression or script tried something the sandbox forbids, or exceeded a limit."""

    status = 422
    title = "Expression refused"


@dataclass
class ExpressionFailure(EngineError):
    """Evaluation of an expression/script failed at run time (becomes an incident)."""

    detail: str
    expression: str | None = None
    activity_id: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        Exception.__init__(self, self.detail)
