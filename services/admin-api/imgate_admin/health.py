"""Probes (open to everyone, so orchestrators need no token) and the Prometheus scrape endpoint."""

import asyncio
from collections import Counter
from collections.abc import Awaitable
from typing import Literal

import structlog
from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text
from sqlmodel import select

from imgate_admin.auth import require_token
from imgate_admin.channels import service as channels
from imgate_admin.deps import Resources, ResourcesDep
from imgate_common.db.models import Channel
from imgate_common.messages import ChannelState

log = structlog.get_logger()

router = APIRouter(tags=["health"])

CheckResult = Literal["ok", "unreachable"]


class Health(BaseModel):
    ok: bool


class Readiness(BaseModel):
    ok: bool
    checks: dict[str, CheckResult]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process answers."""
    return Health(ok=True)


async def _database(resources: Resources) -> None:
    async with resources.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _nats(resources: Resources) -> None:
    if not resources.nc.is_connected:
        raise ConnectionError("not connected")
    # A round trip to the server; the outer timeout bounds it (flush takes whole seconds).
    await resources.nc.flush(timeout=max(1, int(resources.settings.ready_check_timeout_s)))


async def _redis(resources: Resources) -> None:
    await resources.redis.ping()


async def _check(name: str, probe: Awaitable[None], limit_s: float) -> CheckResult:
    try:
        async with asyncio.timeout(limit_s):
            await probe
    except Exception as exc:
        log.warning("readiness_check_failed", check=name, error_type=type(exc).__name__)
        return "unreachable"
    return "ok"


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is unreachable"}},
)
async def readyz(resources: ResourcesDep, response: Response) -> Readiness:
    """The database, NATS and Redis all answer."""
    timeout = resources.settings.ready_check_timeout_s
    names = ("database", "nats", "redis")
    results = await asyncio.gather(
        _check("database", _database(resources), timeout),
        _check("nats", _nats(resources), timeout),
        _check("redis", _redis(resources), timeout),
    )
    checks = dict(zip(names, results, strict=True))
    ready = all(r == "ok" for r in results)
    if not ready:
        response.status_code = 503
    return Readiness(ok=ready, checks=checks)


@router.get(
    "/metrics",
    dependencies=[Depends(require_token)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(resources: ResourcesDep) -> Response:
    """Prometheus metrics (needs the bearer token like the API)."""
    async with resources.sessions() as session:
        rows = (await session.exec(select(Channel))).all()
    states = Counter(s.state for s in await channels.read_statuses(resources.status_store, rows))
    for state in ChannelState:
        resources.metrics.channels.labels(str(state)).set(states.get(state, 0))
    return Response(generate_latest(resources.metrics.registry), media_type=CONTENT_TYPE_LATEST)
