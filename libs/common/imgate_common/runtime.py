"""Process plumbing every service shares: identity, logging and tracing, the clients of the
bus, Redis and the database opened in one lifespan, and signal-driven shutdown."""

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TypeVar

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import provision_streams
from imgate_common.channels import load_secret_box
from imgate_common.consumers import ConsumerSpec, ensure_consumer
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.logs import configure_logging
from imgate_common.metrics import MetricsServer
from imgate_common.secrets import SecretBox, UnreadableSecrets
from imgate_common.settings import CommonSettings
from imgate_common.telemetry import configure_tracing

log = structlog.get_logger()


def instance_id(settings: CommonSettings) -> str:
    return settings.instance_id or f"{socket.gethostname()}:{os.getpid()}"


async def connect_nats(settings: CommonSettings, name: str) -> tuple[NATS, JetStreamContext]:
    """Connect (retrying forever in the background after the first success) and provision streams."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=str(exc))

    async def on_disconnect() -> None:
        if not nc.is_closed:  # a close of our own is no disconnection worth a warning
            log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    nc = await nats.connect(
        settings.nats_url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    js = nc.jetstream()
    await provision_streams(js, settings.stream_replicas, settings.stream_limits())
    return nc, js


async def close_nats(nc: NATS) -> None:
    """Drain the connection at shutdown, or just close it when the server is already gone
    (`make run` stops nats-server beside the services): a stop never ends in a traceback."""
    try:
        await nc.drain()
    except (NatsError, OSError) as exc:
        log.info("nats_closed_without_drain", reason=str(exc) or type(exc).__name__)
        await nc.close()


def connect_redis(settings: CommonSettings) -> Redis:
    """The process's Redis client over a bounded pool that waits for a free connection (the
    default pool raises "Too many connections" at once under a burst)."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
    )
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the connections


@dataclass
class ServiceRuntime:
    """The clients a service's lifespan opened; `stack` closes them (and whatever the service
    adds to it) in reverse order when the lifespan ends."""

    settings: CommonSettings
    nc: NATS
    js: JetStreamContext
    redis: Redis
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    stack: AsyncExitStack

    async def secret_box(self) -> SecretBox:
        """The key ring, refused (`UnreadableSecrets`) when it cannot read what the database holds."""
        return await load_secret_box(self.settings, self.sessions)


@asynccontextmanager
async def service_lifespan(
    settings: CommonSettings, name: str, *, consumers: Iterable[ConsumerSpec] = (), pre_ping: bool = True
) -> AsyncIterator[ServiceRuntime]:
    """Connect to the bus (streams provisioned, then `consumers` declared or brought to their
    policy before anybody binds them), Redis and the database; close all of them at the end,
    and the ones already open when a later one fails at start."""
    async with AsyncExitStack() as stack:
        nc, js = await connect_nats(settings, name)
        stack.push_async_callback(close_nats, nc)
        for spec in consumers:
            await ensure_consumer(js, spec)
        redis = connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        engine = create_engine(settings.database_url, pre_ping=pre_ping)
        stack.push_async_callback(engine.dispose)
        yield ServiceRuntime(settings, nc, js, redis, engine, session_factory(engine), stack)


@contextmanager
def process_telemetry(service: str, settings: CommonSettings) -> Iterator[None]:
    """Logging and tracing for the process; spans still buffered go out when it ends."""
    configure_logging(service, settings.log_format, settings.log_level)
    provider = configure_tracing(service, instance=instance_id(settings), content=settings.trace_content)
    try:
        yield
    finally:
        provider.shutdown()


S = TypeVar("S", bound=CommonSettings)


def service_main(service: str, settings: S, serve: Callable[[S, asyncio.Event], Awaitable[None]]) -> None:
    """A service process: logging, tracing and metrics set up, then `serve` until SIGTERM/SIGINT."""
    with process_telemetry(service, settings):
        metrics = MetricsServer(settings.metrics_port, settings.metrics_host)
        try:
            run_until_signalled(lambda stop: serve(settings, stop))
        except UnreadableSecrets as exc:
            # A configuration error, not a crash: one line for the operator, no traceback.
            log.error("startup_refused", reason=str(exc))
            raise SystemExit(2) from None
        finally:
            metrics.close()


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` where `stop` is set on SIGTERM/SIGINT, letting the service drain."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
