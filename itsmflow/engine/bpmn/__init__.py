"""BPMN 2.0 / DMN parsing and validation of uploaded deployments.

Public API::

    parse_deployment(files, *, max_bytes=DEFAULT_MAX_BYTES, script_validator=None, strict=True)
        -> ParsedDeployment                       # raises DeploymentInvalid(issues)
    spec_to_json(spec, subprocess_specs) -> str
    spec_from_json(s) -> (spec, subprocess_specs)
    SERIALIZER_CONFIG                          # use it for the BpmnWorkflowSerializer of instances
    parse_document(name, data, *, max_bytes=...) -> (XmlDocument | None, [SourceIssue])
    validate_document(doc) -> [SourceIssue]
"""

from .model import (
    CollaborationModel,
    DecisionModel,
    ParsedDeployment,
    ProcessModel,
    TimerModel,
    UserTaskModel,
)
from .parsing import (
    SERIALIZER_CONFIG,
    SPEC_FORMAT,
    ScriptValidator,
    parse_deployment,
    spec_from_json,
    spec_to_json,
)
from .xml import DEFAULT_MAX_BYTES, DOCTYPE_REFUSED, XmlDocument, parse_document
from .xsd import document_kind, validate_document

__all__ = [
    "CollaborationModel",
    "DecisionModel",
    "ParsedDeployment",
    "ProcessModel",
    "TimerModel",
    "UserTaskModel",
    "SERIALIZER_CONFIG",
    "SPEC_FORMAT",
    "ScriptValidator",
    "parse_deployment",
    "spec_from_json",
    "spec_to_json",
    "DEFAULT_MAX_BYTES",
    "DOCTYPE_REFUSED",
    "XmlDocument",
    "parse_document",
    "document_kind",
    "validate_document",
]
