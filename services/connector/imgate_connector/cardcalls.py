"""Card calls of one channel, whatever the platform: under the app's card-call scheduler, behind
a circuit breaker, with throttling and transient failures retried.

A platform's reply surface subclasses `CardSurface` and says how one request is sent. Every card
call waits for its turn in the app's scheduler (finals first, then opens, then streaming
updates). The calls that must happen (create, finalize) back off on throttling (`RateLimited`)
and retry, and give up only after `card_rate_limit_patience_s`; blips (network, 5xx) are tried
`TRANSIENT_ATTEMPTS` times in all. Optional calls (streaming updates, a queued line) skip when a
newer one replaces them, the platform throttles, or the circuit is open. Card calls that keep
failing open the circuit for a while, so answers go out as plain text at once instead of after
retries.
"""

import asyncio
import random
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import httpx
import structlog

from imgate_common.errors import PlatformError, RateLimited
from imgate_connector.health import ChannelHealth
from imgate_connector.lease import CALL_TIMEOUT_SHARE
from imgate_connector.metrics import RATE_LIMITED
from imgate_connector.platforms.base import CardExists, CardsUnavailable, ReplySurface
from imgate_connector.resources import ConnectorResources
from imgate_connector.scheduler import CallClass, CardCallScheduler, CardSchedulers
from imgate_connector.settings import ConnectorSettings

log = structlog.get_logger()

T = TypeVar("T")
R = TypeVar("R")  # one card call as a platform describes it

# Transient failures (5xx, network) of a call that must happen are tried this often in all.
TRANSIENT_ATTEMPTS = 3


def transient(exc: Exception) -> bool:
    """Worth another try soon: the network, a 5xx, or throttling (after waiting)."""
    if isinstance(exc, RateLimited):
        return True
    if isinstance(exc, PlatformError):
        return exc.status is None or exc.status >= 500
    return isinstance(exc, httpx.TransportError)


async def with_retries(call: Callable[[], Awaitable[T]], attempts: int = TRANSIENT_ATTEMPTS) -> T:
    """`call()`, tried again after a short pause while it fails transiently (plain messages)."""
    for attempt in range(attempts - 1):
        try:
            return await call()
        except Exception as exc:
            if not transient(exc):
                raise
            await asyncio.sleep(0.3 * 2**attempt)
    return await call()


def app_scheduler(
    resources: ConnectorResources, settings: ConnectorSettings, app: str, card_calls: int
) -> CardCallScheduler:
    """The card-call scheduler of a platform app: card calls are budgeted per app, so every
    channel of the app in this process shares one. `card_calls`: what an answer costs at least."""
    return resources.shared(CardSchedulers).get(
        resources.redis,
        resources.redis_prefix,
        app,
        settings.card_qps,
        call_timeout_s=settings.lease_ttl_s * CALL_TIMEOUT_SHARE,
        card_calls=card_calls,
    )


class CardCircuit:
    """Consecutive card failures trip it; while open, cards are not tried at all."""

    def __init__(self, trip_after: int, cooldown_s: float) -> None:
        self._trip_after = trip_after
        self._cooldown = cooldown_s
        self._failures = 0
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self._open_until

    def check(self) -> None:
        """Raise `CardsUnavailable` while open."""
        if (left := self._open_until - time.monotonic()) > 0:
            raise CardsUnavailable("card calls are paused after repeated failures", retry_in_s=left)

    def success(self) -> None:
        self._failures = 0

    def failure(self) -> bool:
        """Count one; True when this failure tripped the circuit."""
        self._failures += 1
        if self._failures >= self._trip_after and not self.open:
            self._open_until = time.monotonic() + self._cooldown
            self._failures = 0
            return True
        return False


class CardSurface(ReplySurface, Generic[R]):
    """A reply surface whose card calls go through the core: a platform supplies how one
    request (`R`, e.g. method, path and body) is sent, and its duplicate-card answer."""

    def __init__(
        self, platform: str, scheduler: CardCallScheduler, health: ChannelHealth, settings: ConnectorSettings
    ) -> None:
        self._platform = platform
        self.scheduler = scheduler
        self._health = health
        health.card_mode = lambda: str(scheduler.mode)
        self._patience = settings.card_rate_limit_patience_s
        self._circuit = CardCircuit(settings.card_failures_to_trip, settings.card_cooldown_s)
        self.max_card_chars = settings.card_max_chars
        self.card_calls = 0  # card calls that went out

    @abstractmethod
    async def _send(self, request: R) -> dict[str, Any]:
        """Make one card call; `RateLimited` when throttled, `PlatformError` when refused."""

    def _label(self, request: R) -> str:
        """The request as logs name it."""
        return str(request)

    def _card_exists(self, exc: PlatformError) -> bool:
        """Whether the platform's refusal says the card is there already."""
        return False

    def card_admitted(self) -> bool:
        return self.scheduler.admit()

    def withdraw(self, card_id: str) -> None:
        self.scheduler.withdraw(card_id)

    def _check_fence(self) -> None:
        if self.fence is not None:
            self.fence.check()

    def _throttled(self, exc: RateLimited, request: R) -> None:
        self._health.rate_limit_hits += 1
        RATE_LIMITED.labels(self._platform).inc()
        self._health.error(f"card API throttled: {exc}")
        log.warning("card_api_throttled", path=self._label(request), status=exc.status, code=exc.code)

    async def _must(
        self, request: R, cls: CallClass = CallClass.FINAL, since: float | None = None
    ) -> dict[str, Any]:
        """A call that has to happen: waits for its turn, retries throttling and blips. Calls of
        one final share `since`, so a final begun goes on before finals begun after it.
        `CardExists` when the platform says the card is there already."""
        self._circuit.check()
        started = time.monotonic()
        deadline = started + self._patience
        throttled = failed = 0
        while True:
            await self.scheduler.acquire(cls, order=started if since is None else since)
            self._check_fence()
            self._circuit.check()  # tripped while this call waited for its turn
            self.card_calls += 1
            try:
                result = await self._send(request)
            except RateLimited as exc:
                self._throttled(exc, request)
                await self.scheduler.penalize()
                throttled += 1
                if time.monotonic() >= deadline:
                    raise
                backoff = min(4.0, 0.25 * 2**throttled) * random.uniform(0.5, 1.0)
                # Not before the platform's window reopens, when it said (within the patience).
                reopens = min(exc.retry_after_s or 0.0, max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(max(backoff, reopens))
                continue
            except PlatformError as exc:
                if self._card_exists(exc):
                    raise CardExists(str(exc), exc.status, exc.code) from exc
                failed += 1
                if self._circuit.failure():
                    log.warning("card_circuit_open", error=str(exc))
                if transient(exc) and failed < TRANSIENT_ATTEMPTS and not self._circuit.open:
                    await asyncio.sleep(0.25 * 2**failed * random.uniform(0.5, 1.0))
                    continue
                raise
            self._circuit.success()
            return result

    async def _may(self, card_id: str, request: Callable[[], R], since: float | None) -> bool:
        """An optional call: waits for a slot left by the calls that must happen, the card whose
        reader waited longest (`since`) first; made (`request()`) only once its turn came, so it
        carries what is newest then. False if it did not go."""
        if self._circuit.open or not await self.scheduler.acquire(CallClass.STREAM, key=card_id, order=since):
            return False
        if self.fence is not None and not self.fence.valid():
            return False
        made = request()
        self.card_calls += 1
        try:
            await self._send(made)
        except RateLimited as exc:
            self._throttled(exc, made)
            await self.scheduler.penalize()
            return False
        except PlatformError as exc:
            self._health.error(f"card update failed: {exc}")
            log.warning("card_update_failed", path=self._label(made), error=str(exc))
            if transient(exc):
                self._circuit.failure()
            return False
        return True
