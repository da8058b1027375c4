"""HTTP routes of /api/v1/channels, and the catalogue of platforms and user-mapping modes."""

from typing import Annotated

from fastapi import APIRouter, Query, Response

from imgate_admin.auth import ActorDep
from imgate_admin.channels import service
from imgate_admin.channels.control import ControlResult
from imgate_admin.channels.schemas import (
    ChannelChange,
    ChannelCreate,
    ChannelRead,
    ChannelStatusRead,
    ChannelUpdate,
    ControlOutcome,
    PlatformRead,
    UserMappingModeRead,
)
from imgate_admin.deps import ResourcesDep, SessionDep
from imgate_admin.errors import ErrorBody, Responses
from imgate_admin.schemas import TOTAL_COUNT_HEADER, IdPath, Limit, Offset, QueryText
from imgate_common.db.models import Channel
from imgate_common.messages import ChannelState
from imgate_common.platform_config import USER_MAPPINGS
from imgate_common.platforms import PLATFORM_CONFIGS

router = APIRouter(prefix="/channels", tags=["channels"])
catalogue = APIRouter(tags=["channels"])

NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No channel has this id"}}
NAME_TAKEN: Responses = {409: {"model": ErrorBody, "description": "The name is taken"}}
NO_AGENT: Responses = {400: {"model": ErrorBody, "description": "default_agent_id names no agent"}}


def _outcome(result: ControlResult | None) -> ControlOutcome | None:
    if result is None:
        return None
    reply = result.reply
    return ControlOutcome(
        action=str(result.action),
        outcome=result.outcome,
        ok=reply.ok if reply else None,
        state=reply.state if reply else None,
        error=reply.error if reply else None,
        owner=reply.owner if reply else None,
    )


async def _changed(resources: ResourcesDep, channel: Channel, result: ControlResult | None) -> ChannelChange:
    status = await service.read_status(resources.status_store, channel)
    return ChannelChange(**ChannelRead.fields_of(channel, status), control=_outcome(result))


@router.post("", status_code=201, response_model=ChannelChange, responses={**NO_AGENT, **NAME_TAKEN})
async def create_channel(
    body: ChannelCreate, session: SessionDep, resources: ResourcesDep, actor: ActorDep
) -> ChannelChange:
    """Create a channel; an enabled one is started on its connector at once."""
    channel, result = await service.create_channel(session, resources.box, resources.control, actor, body)
    return await _changed(resources, channel, result)


@router.get("", response_model=list[ChannelRead])
async def list_channels(
    session: SessionDep,
    resources: ResourcesDep,
    response: Response,
    platform: Annotated[QueryText | None, Query(description="only this platform")] = None,
    state: Annotated[ChannelState | None, Query(description="only channels in this live state")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[ChannelRead]:
    """Channels by id with their live status; `X-Total-Count` holds the number that match."""
    page, total = await service.list_channels(
        session, resources.status_store, platform=platform, state=state, limit=limit, offset=offset
    )
    response.headers[TOTAL_COUNT_HEADER] = str(total)
    return [ChannelRead.from_row(c, s) for c, s in page]


@router.get("/{channel_id}", response_model=ChannelRead, responses=NOT_FOUND)
async def get_channel(channel_id: IdPath, session: SessionDep, resources: ResourcesDep) -> ChannelRead:
    channel = await service.get_channel(session, channel_id)
    return ChannelRead.from_row(channel, await service.read_status(resources.status_store, channel))


@router.patch(
    "/{channel_id}", response_model=ChannelChange, responses={**NOT_FOUND, **NO_AGENT, **NAME_TAKEN}
)
async def update_channel(
    channel_id: IdPath, body: ChannelUpdate, session: SessionDep, resources: ResourcesDep, actor: ActorDep
) -> ChannelChange:
    """Change some fields; the connector reloads the channel (and reconnects if its connection
    config changed), is started or stopped when `enabled` changes."""
    channel, result = await service.update_channel(
        session, resources.box, resources.control, actor, channel_id, body
    )
    return await _changed(resources, channel, result)


@router.delete("/{channel_id}", status_code=204, responses={**NOT_FOUND, 409: {"model": ErrorBody}})
async def delete_channel(
    channel_id: IdPath, session: SessionDep, resources: ResourcesDep, actor: ActorDep
) -> None:
    """Stop the channel on its connector, then delete it with its conversations."""
    await service.delete_channel(session, resources.control, resources.status_store, actor, channel_id)


@router.post("/{channel_id}/enable", response_model=ChannelChange, responses=NOT_FOUND)
async def enable_channel(
    channel_id: IdPath, session: SessionDep, resources: ResourcesDep, actor: ActorDep
) -> ChannelChange:
    channel, result = await service.set_enabled(session, resources.control, actor, channel_id, True)
    return await _changed(resources, channel, result)


@router.post("/{channel_id}/disable", response_model=ChannelChange, responses=NOT_FOUND)
async def disable_channel(
    channel_id: IdPath, session: SessionDep, resources: ResourcesDep, actor: ActorDep
) -> ChannelChange:
    channel, result = await service.set_enabled(session, resources.control, actor, channel_id, False)
    return await _changed(resources, channel, result)


@router.post(
    "/{channel_id}/restart",
    response_model=ChannelChange,
    responses={**NOT_FOUND, 400: {"model": ErrorBody, "description": "The channel is disabled"}},
)
async def restart_channel(
    channel_id: IdPath, session: SessionDep, resources: ResourcesDep, actor: ActorDep
) -> ChannelChange:
    """Reconnect the channel, whether or not its config changed."""
    channel, result = await service.restart_channel(session, resources.control, actor, channel_id)
    return await _changed(resources, channel, result)


@router.get("/{channel_id}/status", response_model=ChannelStatusRead, responses=NOT_FOUND)
async def get_channel_status(
    channel_id: IdPath, session: SessionDep, resources: ResourcesDep
) -> ChannelStatusRead:
    channel = await service.get_channel(session, channel_id)
    status = await service.read_status(resources.status_store, channel)
    return ChannelStatusRead.from_status(status)


@catalogue.get("/platforms", response_model=list[PlatformRead])
async def list_platforms() -> list[PlatformRead]:
    """The platforms a channel can use, each with the JSON schema of its `config`."""
    return [
        PlatformRead(
            name=name,
            secret_fields=sorted(model.secret_fields),
            destination_fields=sorted(model.destination_fields),
            config_schema=model.model_json_schema(),
        )
        for name, model in sorted(PLATFORM_CONFIGS.items())
    ]


@catalogue.get("/user-mappings", response_model=list[UserMappingModeRead])
async def list_user_mapping_modes() -> list[UserMappingModeRead]:
    """The ways IM users can be mapped onto users, each with the JSON schema of its settings."""
    return [
        UserMappingModeRead(
            mode=mode,
            secret_fields=sorted(model.secret_fields),
            destination_fields=sorted(model.destination_fields),
            config_schema=model.model_json_schema(),
        )
        for mode, model in USER_MAPPINGS.items()
    ]
