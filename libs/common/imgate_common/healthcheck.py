"""Liveness/readiness probe for the services without an HTTP port:
`python -m imgate_common.healthcheck` exits 0 when NATS and Redis answer within 2 s, else 1.

Light on purpose: no FastStream, no database, no stream set-up, nothing written.
"""

import asyncio
import sys
from urllib.parse import urlsplit, urlunsplit

import nats
from redis.asyncio import Redis

from imgate_common.settings import CommonSettings

TIMEOUT_S = 2.0


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


async def _nats(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=TIMEOUT_S, max_reconnect_attempts=0, allow_reconnect=False)
    try:
        await nc.flush(timeout=round(TIMEOUT_S))
    finally:
        await nc.close()


async def _redis(url: str) -> None:
    client = Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def check(settings: CommonSettings) -> list[str]:
    """The names of the dependencies that did not answer (empty when healthy)."""
    checks = {
        f"nats ({_without_credentials(settings.nats_url)})": _nats(settings.nats_url),
        f"redis ({_without_credentials(settings.redis_url)})": _redis(settings.redis_url),
    }
    results = await asyncio.gather(
        *(asyncio.wait_for(c, TIMEOUT_S + 0.5) for c in checks.values()), return_exceptions=True
    )
    return [name for name, result in zip(checks, results, strict=True) if isinstance(result, BaseException)]


def main() -> int:
    try:
        failed = asyncio.run(check(CommonSettings()))
    except Exception as exc:  # a probe must answer, never hang or crash with a traceback
        print(f"unhealthy: {type(exc).__name__}", file=sys.stderr)
        return 1
    if failed:
        print(f"unhealthy: {', '.join(failed)} did not answer", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
