"""Connector process: holds the platform connections of the channels this replica owns."""

import asyncio

import httpx
import structlog
from redis.asyncio import Redis

from imgate_common.db.engine import create_engine, session_factory
from imgate_common.runtime import connect_nats, instance_id, service_main
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore
from imgate_connector.lease import ChannelLease
from imgate_connector.settings import ConnectorSettings
from imgate_connector.supervisor import ChannelSupervisor

log = structlog.get_logger()


async def serve(settings: ConnectorSettings, stop: asyncio.Event) -> None:
    owner = instance_id(settings)
    nc, js = await connect_nats(settings, f"connector {owner}")
    redis = Redis.from_url(settings.redis_url)
    engine = create_engine(settings.database_url)
    http = httpx.AsyncClient(timeout=settings.http_timeout_s)
    try:
        supervisor = ChannelSupervisor(
            settings,
            nc,
            js,
            session_factory(engine),
            SecretBox.from_settings(settings),
            ChannelLease(redis, settings.redis_prefix, owner, settings.lease_ttl_s),
            ChannelStatusStore(redis, settings.redis_prefix),
            http,
        )
        log.info("connector_started", owner=owner)
        await supervisor.run(stop)
    finally:
        await http.aclose()
        await nc.drain()
        await redis.aclose()
        await engine.dispose()
        log.info("connector_stopped", owner=owner)


def main() -> None:
    service_main("connector", ConnectorSettings(), serve)


if __name__ == "__main__":
    main()
