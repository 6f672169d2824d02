"""Message correlation and signals: ``POST /api/messages``, ``POST /api/signals``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse as PlainJSON

from ..auth import PrincipalDep
from ..deps import EngineDep
from ..models import MessageBuffered, MessageRequest, MessageResult, SignalRequest, SignalResult
from ..responses import problems

router = APIRouter(tags=["messages"])


@router.post(
    "/messages", response_model=MessageResult,
    summary="Correlate a message to waiting instances, or start instances by message start event",
    responses={202: {"model": MessageBuffered, "description": "nothing waits yet; buffered for ttlSeconds"},
               **problems(401, 404, 422)},
)
def correlate_message(engine: EngineDep, principal: PrincipalDep, body: MessageRequest):  # noqa: ANN201
    result = engine.messages.correlate(
        body.message_name, business_key=body.business_key, correlation_keys=body.correlation_keys,
        variables=body.variables, message_id=body.message_id, ttl_seconds=body.ttl_seconds,
        actor=principal.user_id,
    )
    if result.buffered:
        out = MessageBuffered.model_validate({"buffered": True, "expiresAt": result.expires_at,
                                              "duplicate": result.duplicate})
        return PlainJSON(status_code=202, content=out.model_dump(mode="json", by_alias=True))
    return MessageResult.model_validate(result.as_dict())


@router.post("/signals", response_model=SignalResult, summary="Broadcast a signal to every waiting instance",
             responses=problems(401, 422))
def send_signal(engine: EngineDep, principal: PrincipalDep, body: SignalRequest) -> SignalResult:
    return SignalResult(triggered=engine.messages.signal(body.name, body.variables, actor=principal.user_id))
