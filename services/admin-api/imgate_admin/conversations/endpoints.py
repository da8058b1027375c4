"""HTTP routes of /api/v1/conversations."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import StringConstraints

from imgate_admin.auth import ActorDep
from imgate_admin.conversations import service
from imgate_admin.conversations.schemas import ConversationDetail, ConversationRead, MessageRead
from imgate_admin.deps import SessionDep
from imgate_admin.errors import ErrorBody, Responses
from imgate_admin.schemas import MAX_ID, TOTAL_COUNT_HEADER, Limit, Offset, SafeText

router = APIRouter(prefix="/conversations", tags=["conversations"])

NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No conversation has this id"}}
ConversationId = Annotated[SafeText, StringConstraints(min_length=1, max_length=36), Path()]
RowId = Annotated[int | None, Query(ge=1, le=MAX_ID)]


@router.get("", response_model=list[ConversationRead])
async def list_conversations(
    session: SessionDep,
    response: Response,
    channel_id: RowId = None,
    user_id: RowId = None,
    is_open: Annotated[bool | None, Query(alias="open", description="only open (or closed) ones")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[ConversationRead]:
    """Most recently active first; `X-Total-Count` holds the number that match."""
    conversations, total = await service.list_conversations(
        session, channel_id=channel_id, user_id=user_id, is_open=is_open, limit=limit, offset=offset
    )
    counts = await service.message_counts(session, [c.id for c in conversations])
    response.headers[TOTAL_COUNT_HEADER] = str(total)
    return [ConversationRead.from_row(c, counts.get(c.id, 0)) for c in conversations]


@router.get("/{conversation_id}", response_model=ConversationDetail, responses=NOT_FOUND)
async def get_conversation(conversation_id: ConversationId, session: SessionDep) -> ConversationDetail:
    """The conversation with its transcript."""
    conversation = await service.get_conversation(session, conversation_id)
    messages = await service.transcript(session, conversation_id)
    return ConversationDetail(
        **ConversationRead.from_row(conversation, len(messages)).model_dump(),
        messages=[MessageRead.from_row(m) for m in messages],
    )


@router.post("/{conversation_id}/close", response_model=ConversationRead, responses=NOT_FOUND)
async def close_conversation(
    conversation_id: ConversationId, session: SessionDep, actor: ActorDep
) -> ConversationRead:
    conversation = await service.close_conversation(session, actor, conversation_id)
    counts = await service.message_counts(session, [conversation.id])
    return ConversationRead.from_row(conversation, counts.get(conversation.id, 0))
