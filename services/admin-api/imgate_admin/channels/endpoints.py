"""HTTP routes of /api/v1/channels."""

from fastapi import APIRouter

from imgate_admin.channels import service
from imgate_admin.channels.schemas import ChannelCreate, ChannelRead, ChannelStatusRead
from imgate_admin.deps import ResourcesDep, SessionDep
from imgate_admin.errors import ErrorBody

router = APIRouter(prefix="/channels", tags=["channels"])


@router.post(
    "",
    status_code=201,
    response_model=ChannelRead,
    responses={
        400: {"model": ErrorBody, "description": "default_agent_id names no agent"},
        409: {"model": ErrorBody, "description": "The name is taken"},
    },
)
async def create_channel(body: ChannelCreate, session: SessionDep, resources: ResourcesDep) -> ChannelRead:
    channel = await service.create_channel(session, resources.box, resources.control, body)
    status = await service.read_status(resources.status_store, channel)
    return ChannelRead.from_row(channel, status)


@router.get("", response_model=list[ChannelRead])
async def list_channels(session: SessionDep, resources: ResourcesDep) -> list[ChannelRead]:
    channels = await service.list_channels(session)
    statuses = await service.read_statuses(resources.status_store, channels)
    return [ChannelRead.from_row(c, s) for c, s in zip(channels, statuses, strict=True)]


@router.get("/{channel_id}", response_model=ChannelRead, responses={404: {"model": ErrorBody}})
async def get_channel(channel_id: int, session: SessionDep, resources: ResourcesDep) -> ChannelRead:
    channel = await service.get_channel(session, channel_id)
    return ChannelRead.from_row(channel, await service.read_status(resources.status_store, channel))


@router.get("/{channel_id}/status", response_model=ChannelStatusRead, responses={404: {"model": ErrorBody}})
async def get_channel_status(
    channel_id: int, session: SessionDep, resources: ResourcesDep
) -> ChannelStatusRead:
    channel = await service.get_channel(session, channel_id)
    status = await service.read_status(resources.status_store, channel)
    return ChannelStatusRead.from_status(status)
