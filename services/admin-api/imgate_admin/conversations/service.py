"""Conversation use cases over the database."""

from collections.abc import Sequence

import structlog
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.audit.service import record_action
from imgate_common.db.models import Conversation, Message, utcnow
from imgate_common.errors import NotFound

log = structlog.get_logger()


async def list_conversations(
    session: AsyncSession,
    *,
    channel_id: int | None,
    user_id: int | None,
    is_open: bool | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Conversation], int]:
    """Most recently active first."""
    query = select(Conversation)
    if channel_id is not None:
        query = query.where(col(Conversation.channel_id) == channel_id)
    if user_id is not None:
        query = query.where(col(Conversation.user_id) == user_id)
    if is_open is not None:
        closed = col(Conversation.closed_at)
        query = query.where(closed.is_(None) if is_open else closed.is_not(None))
    total = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    page = query.order_by(col(Conversation.last_activity_at).desc(), col(Conversation.id))
    return (await session.exec(page.limit(limit).offset(offset))).all(), int(total)


async def message_counts(session: AsyncSession, conversation_ids: Sequence[str]) -> dict[str, int]:
    if not conversation_ids:
        return {}
    query = (
        select(Message.conversation_id, func.count())
        .where(col(Message.conversation_id).in_(conversation_ids))
        .group_by(col(Message.conversation_id))
    )
    return {cid: int(count) for cid, count in (await session.exec(query)).all()}


async def get_conversation(session: AsyncSession, conversation_id: str) -> Conversation:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(f"conversation {conversation_id} does not exist")
    return conversation


async def transcript(session: AsyncSession, conversation_id: str) -> Sequence[Message]:
    query = (
        select(Message)
        .where(col(Message.conversation_id) == conversation_id)
        .order_by(col(Message.created_at), col(Message.id))
    )
    return (await session.exec(query)).all()


async def close_conversation(session: AsyncSession, actor: str, conversation_id: str) -> Conversation:
    """End the conversation: the user's next message starts a fresh context, as after `/new`.
    Closing a closed conversation changes nothing."""
    conversation = await get_conversation(session, conversation_id)
    if conversation.closed_at is None:
        conversation.closed_at = utcnow()
        session.add(conversation)
        record_action(
            session,
            actor,
            "conversation.close",
            f"conversation:{conversation_id}",
            {"channel_id": conversation.channel_id, "user_id": conversation.user_id},
        )
        await session.commit()
        log.info("conversation_closed", conversation_id=conversation_id)
    return conversation
