"""Fault injection: the per-app configuration, its seeded randomness, and one-shot OpenAPI faults."""

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imsim.faults import FaultRandom, QpsWindow
from imsim.platforms.dingtalk.errors import OpenApiError

CARD_API_PREFIX = "/v1.0/card/"
QPS_LIMIT_CODE = "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"
THROTTLED_CODE = "Throttling"

OpenFailure = Literal["none", "server_error", "bad_credentials", "ticket_refused"]


class FaultConfig(BaseModel):
    """What goes wrong for one app, switchable at run time. The defaults inject nothing."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(None, description="seeds the app's randomness; null: OS entropy")
    card_qps_limit: int | None = Field(None, gt=0, description="card calls per sliding second")
    card_qps_mode: Literal[403, 429] = 403
    card_latency_ms: float = Field(0, ge=0, description="added to every card call that gets through")
    card_jitter_ms: float = Field(0, ge=0, description="latency varies uniformly by ± this much")
    card_failure_rate: float = Field(0, ge=0, le=1, description="share of card calls answered 500")
    card_down: bool = Field(False, description="every card call answers 503")
    messages_down: bool = Field(
        False, description="every plain message (sessionWebhook, robot send API) answers 503"
    )
    disconnect_every: float | None = Field(
        None, gt=0, description="SYSTEM disconnect to each connection N s after it opened"
    )
    half_dead: bool = Field(False, description="sockets stay open but nothing passes, either way")
    open_failure: OpenFailure = "none"
    open_failure_status: int = Field(503, ge=500, le=599, description="status of open_failure=server_error")
    open_failure_count: int | None = Field(None, ge=1, description="fail the next N opens; null: all")

    def merged(self, changes: dict[str, Any]) -> "FaultConfig":
        """This configuration with `changes` applied, validated as a whole."""
        return FaultConfig.model_validate({**self.model_dump(), **changes})

    def active(self) -> list[str]:
        """The faults switched on, in words (the chat page's header)."""
        on = []
        if self.card_down:
            on.append("cards down")
        if self.card_qps_limit:
            on.append(f"card QPS {self.card_qps_limit} → {self.card_qps_mode}")
        if self.card_failure_rate:
            on.append(f"card failures {round(self.card_failure_rate * 100)}%")
        if self.card_latency_ms or self.card_jitter_ms:
            on.append(f"card latency {self.card_latency_ms:g}±{self.card_jitter_ms:g} ms")
        if self.messages_down:
            on.append("messages down")
        if self.disconnect_every:
            on.append(f"disconnect every {self.disconnect_every:g} s")
        if self.half_dead:
            on.append("half-dead sockets")
        if self.open_failure != "none":
            on.append(f"open: {self.open_failure}")
        return on


@dataclass
class CardVerdict:
    """How imsim answers one card call: wait `delay` seconds, then fail with `error` or serve it."""

    delay: float
    error: OpenApiError | None
    outcome: str  # ok | card_down | qps_limited | failure_injected


def is_card_call(path: str) -> bool:
    return path.startswith(CARD_API_PREFIX)


def judge_card_call(config: FaultConfig, window: QpsWindow, rng: FaultRandom) -> CardVerdict:
    """Card APIs down and QPS limits answer at once (they sit in front of the service); calls
    that get through wait the configured latency, then may fail at the failure rate."""
    if config.card_down:
        error = OpenApiError(503, "ServiceUnavailable", "card service is temporarily unavailable")
        return CardVerdict(0.0, error, "card_down")
    if not window.take(config.card_qps_limit):
        if config.card_qps_mode == 429:
            error = OpenApiError(
                429, THROTTLED_CODE, "too many card API requests", headers={"Retry-After": "1"}
            )
        else:
            error = OpenApiError(403, QPS_LIMIT_CODE, "card API calls over the app's QPS limit")
        return CardVerdict(0.0, error, "qps_limited")
    delay = 0.0
    if config.card_latency_ms or config.card_jitter_ms:
        jitter = rng.latency.uniform(-config.card_jitter_ms, config.card_jitter_ms)
        delay = max(0.0, config.card_latency_ms + jitter) / 1000
    if config.card_failure_rate and rng.failure.random() < config.card_failure_rate:
        error = OpenApiError(500, "InternalError", "system error, please retry later")
        return CardVerdict(delay, error, "failure_injected")
    return CardVerdict(delay, None, "ok")


@dataclass
class Fault:
    """A one-shot injected OpenAPI failure: the next `times` matching calls get this answer."""

    fault_id: str
    path: str
    method: str | None
    status: int
    code: str
    message: str
    times: int | None  # None: until cleared
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        live = self.times is None or self.hits < self.times
        return live and path == self.path and (self.method is None or self.method == method)

    def to_json(self) -> dict[str, Any]:
        return {
            "fault_id": self.fault_id,
            "path": self.path,
            "method": self.method,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "times": self.times,
            "hits": self.hits,
        }
