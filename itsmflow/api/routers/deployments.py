"""``POST /api/deployments``: upload BPMN/DMN files (admin only)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from ...engine.errors import DeploymentInvalid, SourceIssue
from ..auth import PrincipalDep, require_admin
from ..deps import EngineDep
from ..models import DeploymentOut, Name255
from ..responses import problems

router = APIRouter(tags=["deployments"])

MAX_FILES = 200
MAX_FILENAME = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _read_files(files: list[UploadFile]) -> list[tuple[str, bytes]]:
    issues: list[SourceIssue] = []
    out: list[tuple[str, bytes]] = []
    if len(files) > MAX_FILES:
        raise DeploymentInvalid([SourceIssue("<request>", None, None, f"at most {MAX_FILES} files per deployment")])
    for i, upload in enumerate(files):
        fname = upload.filename or ""
        if not fname.strip():
            issues.append(SourceIssue(f"files[{i}]", None, None, "every file part needs a file name"))
        elif len(fname) > MAX_FILENAME or _CONTROL.search(fname):
            issues.append(SourceIssue(f"files[{i}]", None, None,
                                      f"file names must be printable and at most {MAX_FILENAME} characters"))
        else:
            out.append((fname, upload.file.read()))
    if issues:
        raise DeploymentInvalid(issues)
    return out


@router.post(
    "/deployments",
    response_model=DeploymentOut,
    status_code=status.HTTP_201_CREATED,
    summary="Deploy BPMN/DMN files (admin)",
    description=(
        "Multipart upload: one or more `files` parts and an optional `name`. Each process in the files gets a "
        "new version when its file's content changed; uploading identical content again changes nothing and "
        "answers **200** with the existing versions instead of **201**. Invalid files: 400 with "
        "`errors: [{file, line, column, message}]`."
    ),
    responses={200: {"model": DeploymentOut, "description": "identical content: the existing versions"},
               **problems(400, 401, 403, 413)},
)
def deploy(
    engine: EngineDep,
    principal: PrincipalDep,
    response: Response,
    files: Annotated[list[UploadFile], File(description="BPMN/DMN files (1..n)")],
    name: Annotated[Name255 | None, Form(description="deployment name (default: the file names)")] = None,
) -> DeploymentOut:
    require_admin(principal, "deploy process definitions")  # before reading the upload; the engine checks again
    payload = _read_files(files)
    label = name or ", ".join(n for n, _ in payload)[:255] or "deployment"
    result = engine.repository.deploy(label, payload, principal=principal, source="api")
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return DeploymentOut.model_validate(result.as_dict())
