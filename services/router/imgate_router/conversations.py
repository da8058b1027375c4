"""Which conversation a message belongs to, and starting over with `/new`."""

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import Conversation, utcnow
from imgate_common.messages import ConversationType, InboundMessage

SCOPE_CONVERSATION = "conversation"  # a group shares one context; 1:1 is per user anyway
SCOPE_USER = "user"  # each member of a group has a context of their own


def scope_key(message: InboundMessage, scope: str) -> str:
    base = f"{message.platform}:{message.target.conversation_id}"
    if scope == SCOPE_USER and message.target.conversation_type == ConversationType.GROUP:
        return f"{base}:{message.sender.id}"
    return base


class ConversationStore:
    def __init__(self, idle_timeout_s: float = 0) -> None:
        # A conversation left alone this long is closed and the next message starts a new one.
        self._idle_timeout_s = idle_timeout_s

    async def current(self, session: AsyncSession, channel_id: int, key: str) -> Conversation | None:
        query = (
            select(Conversation)
            .where(
                Conversation.channel_id == channel_id,
                Conversation.scope_key == key,
                col(Conversation.closed_at).is_(None),
            )
            .order_by(col(Conversation.opened_at).desc())
        )
        return (await session.exec(query)).first()

    async def open(
        self, session: AsyncSession, channel_id: int, key: str, user_id: int | None
    ) -> tuple[str, bool]:
        """The current conversation's id, or a new one's; True when an idle one was closed for it."""
        now = utcnow()
        touched = await self._touch(session, channel_id, key, now)
        if touched is not None:
            return touched, False
        conversation = await self.current(session, channel_id, key)
        expired = conversation is not None and self._idle(conversation, now)
        if conversation is not None and expired:
            conversation.closed_at = now
            session.add(conversation)
            conversation = None
        if conversation is None:
            conversation = Conversation(
                id=str(uuid.uuid4()), channel_id=channel_id, scope_key=key, user_id=user_id
            )
            session.add(conversation)
        conversation.last_activity_at = now
        await session.flush()
        assert conversation.id is not None
        return conversation.id, expired

    async def _touch(self, session: AsyncSession, channel_id: int, key: str, now: datetime) -> str | None:
        """The usual case in one statement: the one open conversation, not idle, marked active
        now. None when there is none (or more than one): `open` then looks closer."""
        query = update(Conversation).where(
            col(Conversation.channel_id) == channel_id,
            col(Conversation.scope_key) == key,
            col(Conversation.closed_at).is_(None),
        )
        if self._idle_timeout_s > 0:
            since = now - timedelta(seconds=self._idle_timeout_s)
            query = query.where(col(Conversation.last_activity_at) >= since)
        query = (
            query.values(last_activity_at=now)
            .returning(col(Conversation.id))
            .execution_options(synchronize_session=False)
        )
        touched = (await session.exec(query)).scalars().all()
        return touched[0] if len(touched) == 1 else None

    def _idle(self, conversation: Conversation, now: datetime) -> bool:
        if self._idle_timeout_s <= 0:
            return False
        last = conversation.last_activity_at
        last = last.replace(tzinfo=UTC) if last.tzinfo is None else last  # SQLite drops the zone
        return (now - last).total_seconds() > self._idle_timeout_s

    async def close(self, session: AsyncSession, channel_id: int, key: str) -> bool:
        conversation = await self.current(session, channel_id, key)
        if conversation is None:
            return False
        conversation.closed_at = utcnow()
        session.add(conversation)
        return True
