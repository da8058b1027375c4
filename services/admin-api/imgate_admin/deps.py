"""The service's resources (made in the lifespan) and the FastAPI dependencies that hand them out."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Request
from nats.aio.client import Client as NATS
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.channels.control import ChannelControl
from imgate_admin.metrics import AdminMetrics
from imgate_admin.settings import AdminSettings
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore


@dataclass(frozen=True)
class Resources:
    settings: AdminSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    nc: NATS
    http: httpx.AsyncClient  # outbound calls: "test this agent"
    box: SecretBox
    status_store: ChannelStatusStore
    control: ChannelControl
    metrics: AdminMetrics


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    async with resources.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
