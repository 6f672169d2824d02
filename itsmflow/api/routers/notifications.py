"""The caller's notifications (RACI *informed*): ``GET /api/notifications``, mark one as read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from ..auth import PrincipalDep
from ..deps import EngineDep, PageDep, set_total
from ..models import Ident, NotificationOut
from ..responses import problems

router = APIRouter(prefix="/notifications", tags=["notifications"])


@router.get("", response_model=list[NotificationOut], summary="The caller's notifications, newest first",
            description="One notification per informed user when a task is created and when it is completed "
                        "(and for the submitter when a sign-off is rejected). `unread=true` lists only unread "
                        "ones. Paginated with `page`/`size`; the total is in `X-Total-Count`.",
            responses=problems(401))
def list_notifications(
    engine: EngineDep,
    principal: PrincipalDep,
    response: Response,
    paging: PageDep,
    unread: Annotated[bool, Query(description="only unread notifications")] = False,
) -> list[NotificationOut]:
    items, total = engine.notifications.list(principal.user_id, unread=unread, page=paging.page, size=paging.size)
    set_total(response, total)
    return [NotificationOut.model_validate(n.as_dict()) for n in items]


@router.post("/{notification_id}/read", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             summary="Mark one of the caller's notifications as read", responses=problems(401, 404))
def mark_read(engine: EngineDep, principal: PrincipalDep,
              notification_id: Annotated[Ident, Path(description="notification id")]) -> Response:
    engine.notifications.mark_read(notification_id, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
