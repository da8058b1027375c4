"""Channel use cases over the database, the status store and the control subject."""

import asyncio
from collections.abc import Sequence

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.audit import record_action
from imgate_admin.channels.control import ChannelControl
from imgate_admin.channels.schemas import ChannelCreate
from imgate_common.db.models import Agent, Channel
from imgate_common.errors import Conflict, InvalidRequest, NotFound
from imgate_common.messages import ChannelStatus, ControlAction
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore

log = structlog.get_logger()


async def _name_taken(session: AsyncSession, name: str) -> bool:
    found = await session.exec(select(Channel.id).where(col(Channel.name) == name))
    return found.first() is not None


async def create_channel(
    session: AsyncSession, box: SecretBox, control: ChannelControl, body: ChannelCreate
) -> Channel:
    if body.default_agent_id is not None and await session.get(Agent, body.default_agent_id) is None:
        # 400, not 404: the URL is fine, the body points at something that is not there.
        raise InvalidRequest(f"default_agent_id: agent {body.default_agent_id} does not exist")
    if await _name_taken(session, body.name):
        raise Conflict(f"a channel named {body.name!r} already exists")
    public, secrets = body.config.split()
    channel = Channel(
        name=body.name,
        platform=body.platform,
        config=public,
        secrets_enc=box.encrypt_json(secrets) if secrets else None,
        default_agent_id=body.default_agent_id,
        session_scope=body.session_scope.value,
        enabled=body.enabled,
    )
    session.add(channel)
    try:
        await session.flush()
        record_action(
            session,
            "channel.create",
            f"channel:{channel.id}",
            {
                "name": channel.name,
                "platform": channel.platform,
                "config": public,  # the public half only: secrets stay out of the audit log
                "default_agent_id": channel.default_agent_id,
                "session_scope": channel.session_scope,
                "enabled": channel.enabled,
            },
        )
        await session.commit()
    except IntegrityError:
        # Lost a race: a concurrent create took the name, or the agent was deleted meanwhile.
        await session.rollback()
        if await _name_taken(session, body.name):
            raise Conflict(f"a channel named {body.name!r} already exists") from None
        if body.default_agent_id is not None and not await session.get(Agent, body.default_agent_id):
            raise InvalidRequest(f"default_agent_id: agent {body.default_agent_id} does not exist") from None
        raise
    assert channel.id is not None
    log.info("channel_created", channel_id=channel.id, platform=channel.platform)
    if channel.enabled:
        # Ask the owner to connect now rather than at its next reconcile; if nobody answers, that
        # reconcile still picks the channel up, so the create stands either way.
        await control.send(channel.id, ControlAction.START)
    return channel


async def list_channels(session: AsyncSession) -> Sequence[Channel]:
    return (await session.exec(select(Channel).order_by(col(Channel.id)))).all()


async def get_channel(session: AsyncSession, channel_id: int) -> Channel:
    channel = await session.get(Channel, channel_id)
    if channel is None:
        raise NotFound(f"channel {channel_id} does not exist")
    return channel


async def read_status(store: ChannelStatusStore, channel: Channel) -> ChannelStatus:
    assert channel.id is not None
    return await store.read(channel.id, channel.enabled)


async def read_statuses(store: ChannelStatusStore, channels: Sequence[Channel]) -> list[ChannelStatus]:
    return list(await asyncio.gather(*(read_status(store, c) for c in channels)))
