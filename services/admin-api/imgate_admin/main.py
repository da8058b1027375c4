"""The app factory: routers, error handlers, metrics, the console, and the lifespan that owns
every client."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog
from fastapi import APIRouter, Depends, FastAPI

from imgate_admin.agents.endpoints import router as agents_router
from imgate_admin.audit.endpoints import router as audit_router
from imgate_admin.auth import require_token
from imgate_admin.channels.control import ChannelControl
from imgate_admin.channels.endpoints import catalogue as catalogue_router
from imgate_admin.channels.endpoints import router as channels_router
from imgate_admin.console import mount_console
from imgate_admin.conversations.endpoints import router as conversations_router
from imgate_admin.dead_letters.endpoints import router as dead_letters_router
from imgate_admin.deps import Resources
from imgate_admin.docs import mount_docs
from imgate_admin.errors import ErrorBody, StartupError, install_error_handlers
from imgate_admin.health import router as health_router
from imgate_admin.key_rotation.endpoints import router as key_rotation_router
from imgate_admin.metrics import AdminMetrics, RequestMetricsMiddleware
from imgate_admin.settings import AdminSettings
from imgate_admin.tokens.endpoints import router as tokens_router
from imgate_admin.users.endpoints import router as users_router
from imgate_common.db.migrate import upgrade_async
from imgate_common.runtime import ServiceRuntime, service_lifespan
from imgate_common.secrets import SecretBox, UnreadableSecrets
from imgate_common.status import ChannelStatusStore

log = structlog.get_logger()

SERVICE = "admin-api"


async def _secret_box(settings: AdminSettings, runtime: ServiceRuntime) -> SecretBox:
    try:
        return await runtime.secret_box()
    except UnreadableSecrets as exc:
        if settings.recover_unreadable_secrets:
            log.warning("unreadable_secrets_recovery", reason=str(exc))
            return SecretBox.from_settings(settings)
        # uvicorn then ends the process ("Application startup failed"); this line says why.
        log.error("startup_refused", reason=str(exc), recovery="ADMIN_RECOVER_UNREADABLE_SECRETS=true")
        raise


@asynccontextmanager
async def open_resources(
    settings: AdminSettings, metrics: AdminMetrics, outbound: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[Resources]:
    """Create every client, closing the ones already made if a later one fails."""
    # Migrating here lets a fresh SQLite file (or an empty PostgreSQL) work at first start.
    await upgrade_async(settings.database_url)
    async with service_lifespan(settings, f"imgate-{SERVICE}") as runtime:
        await runtime.redis.ping()  # fail at start, not at the first status read
        # No redirects: a provider's base URL is called as configured, never elsewhere.
        http = await runtime.stack.enter_async_context(
            httpx.AsyncClient(transport=outbound, follow_redirects=False)
        )
        yield Resources(
            settings=settings,
            engine=runtime.engine,
            sessions=runtime.sessions,
            redis=runtime.redis,
            nc=runtime.nc,
            http=http,
            box=await _secret_box(settings, runtime),
            status_store=ChannelStatusStore(runtime.redis, settings.redis_prefix),
            control=ChannelControl(runtime.nc, settings.control_timeout_s, metrics.control_requests),
            metrics=metrics,
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: AdminSettings = app.state.settings
    async with open_resources(settings, app.state.metrics, app.state.outbound) as resources:
        app.state.resources = resources
        log.info("admin_api_started", host=settings.host, port=settings.port)
        try:
            yield
        finally:
            del app.state.resources
            log.info("admin_api_stopping")


def create_app(settings: AdminSettings, outbound: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The app; `outbound` replaces the transport of its calls to model providers (tests)."""
    if settings.missing_token():
        raise StartupError("ADMIN_TOKEN is empty: set it to the bearer token admin clients will send")
    app = FastAPI(
        title="imgate admin API",
        version="1",
        description="Channels, agents, users and conversations of an imgate installation. "
        "Every /api/v1 route needs `Authorization: Bearer <token>`. The web console is at /console/.",
        lifespan=lifespan,
        responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}},
        docs_url=None,  # served by mount_docs from bundled assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.outbound = outbound
    app.state.metrics = AdminMetrics()
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    app.include_router(health_router)
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])
    for router in (
        channels_router,
        catalogue_router,
        agents_router,
        users_router,
        conversations_router,
        tokens_router,
        audit_router,
        dead_letters_router,
        key_rotation_router,
    ):
        api.include_router(router)
    app.include_router(api)
    mount_console(app)
    mount_docs(app)
    return app
