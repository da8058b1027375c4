"""Connector process: holds the platform connections of the channels this replica owns."""

import asyncio

import httpx
import structlog

from imgate_common.runtime import instance_id, service_lifespan, service_main
from imgate_common.status import ChannelStatusStore
from imgate_connector.lease import ChannelLease, ReplicaSet
from imgate_connector.media import AgentVision, MediaStore
from imgate_connector.resources import ConnectorResources
from imgate_connector.settings import ConnectorSettings
from imgate_connector.supervisor import ChannelSupervisor

log = structlog.get_logger()

# Card and webhook calls of every channel share one pool; a few hundred sockets cover 100 busy
# channels without letting a stuck platform exhaust the process.
HTTP_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64)


async def serve(settings: ConnectorSettings, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    """Run one connector replica until `stop`; `ready` is set once it serves control requests
    and has read the channels."""
    owner = instance_id(settings)
    async with service_lifespan(settings, f"connector {owner}") as runtime:
        runtime.stack.callback(log.info, "connector_stopped", owner=owner)
        http = await runtime.stack.enter_async_context(
            httpx.AsyncClient(timeout=settings.http_timeout_s, limits=HTTP_LIMITS)
        )
        media = MediaStore(
            runtime.js,
            ttl_s=settings.media_ttl_s,
            max_bytes=settings.media_max_bytes,
            replicas=settings.stream_replicas,
            bucket_max_bytes=settings.media_bucket_max_bytes,
        )
        await media.ensure()  # an existing bucket takes the configured cap at start
        vision = AgentVision(runtime.sessions, settings.media_agent_check_s)
        redis = runtime.redis
        supervisor = ChannelSupervisor(
            settings,
            runtime.nc,
            runtime.js,
            runtime.sessions,
            await runtime.secret_box(),
            ChannelLease(redis, settings.redis_prefix, owner, settings.lease_ttl_s),
            ReplicaSet(redis, settings.redis_prefix, owner, settings.lease_ttl_s),
            ChannelStatusStore(redis, settings.redis_prefix),
            ConnectorResources(http, redis, settings.redis_prefix, media, vision),
        )
        log.info("connector_started", owner=owner)
        await supervisor.run(stop, ready)


def main() -> None:
    service_main("connector", ConnectorSettings(), serve)


if __name__ == "__main__":
    main()
