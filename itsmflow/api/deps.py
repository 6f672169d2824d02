"""FastAPI dependencies: the engine (from ``app.state``) and pagination parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request, Response

from ..engine.core import Engine

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
MAX_PAGE = 1_000_000
TOTAL_HEADER = "X-Total-Count"


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


@dataclass(frozen=True)
class Page:
    page: int
    size: int


def get_page(
    page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="1-based page number")] = 1,
    size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="items per page")] = DEFAULT_PAGE_SIZE,
) -> Page:
    return Page(page, size)


PageDep = Annotated[Page, Depends(get_page)]


def set_total(response: Response, total: int) -> None:
    response.headers[TOTAL_HEADER] = str(total)
