"""Feishu's limits and the faults imsim injects: the per-app configuration, and how one OpenAPI
call is judged against it."""

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imsim.faults import FaultRandom, QpsWindow
from imsim.platforms.feishu.errors import (
    INTERNAL_ERROR,
    RATE_LIMITED,
    SERVICE_UNAVAILABLE,
    FeishuApiError,
)

CARDKIT_PREFIX = "/open-apis/cardkit/"
MESSAGES_PREFIX = "/open-apis/im/v1/messages"

EndpointFailure = Literal["none", "system_busy", "server_error", "bad_credentials"]


class FaultConfig(BaseModel):
    """Feishu's own limits (on by default, at Feishu's values; null lifts one) and the faults
    (off by default), switchable at run time."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(None, description="seeds the app's randomness; null: OS entropy")
    api_qps_limit: int | None = Field(50, gt=0, description="calls per second per API per app")
    api_qpm_limit: int | None = Field(1000, gt=0, description="calls per minute per API per app")
    card_ops_limit: int | None = Field(10, gt=0, description="operations per second per card")
    chat_send_limit: int | None = Field(5, gt=0, description="sends and replies per second per chat")
    api_latency_ms: float = Field(0, ge=0, description="added to every API call that gets through")
    api_jitter_ms: float = Field(0, ge=0, description="latency varies uniformly by ± this much")
    api_failure_rate: float = Field(0, ge=0, le=1, description="share of CardKit and IM calls answered 500")
    cards_down: bool = Field(False, description="every CardKit call answers 503")
    messages_down: bool = Field(False, description="every IM send and reply answers 503")
    duplicate_rate: float = Field(0, ge=0, le=1, description="share of events pushed twice at once")
    disconnect_every: float | None = Field(
        None, gt=0, description="close each connection N s after it opened"
    )
    half_dead: bool = Field(False, description="sockets stay open but nothing passes, either way")
    endpoint_failure: EndpointFailure = "none"
    endpoint_failure_count: int | None = Field(
        None, ge=1, description="fail the next N endpoint calls; null: all"
    )

    def merged(self, changes: dict[str, Any]) -> "FaultConfig":
        return FaultConfig.model_validate({**self.model_dump(), **changes})

    def active(self) -> list[str]:
        """The faults switched on and the limits changed, in words (the chat page's header)."""
        defaults = FaultConfig()
        on = []
        if self.cards_down:
            on.append("cards down")
        if self.messages_down:
            on.append("messages down")
        for name, label in (
            ("chat_send_limit", "messages/s per chat"),
            ("api_qps_limit", "API QPS"),
            ("api_qpm_limit", "API QPM"),
            ("card_ops_limit", "card ops/s"),
        ):
            if getattr(self, name) != getattr(defaults, name):
                on.append(f"{label} {getattr(self, name) or 'unlimited'}")
        if self.api_failure_rate:
            on.append(f"API failures {round(self.api_failure_rate * 100)}%")
        if self.api_latency_ms or self.api_jitter_ms:
            on.append(f"API latency {self.api_latency_ms:g}±{self.api_jitter_ms:g} ms")
        if self.duplicate_rate:
            on.append(f"duplicates {round(self.duplicate_rate * 100)}%")
        if self.disconnect_every:
            on.append(f"disconnect every {self.disconnect_every:g} s")
        if self.half_dead:
            on.append("half-dead sockets")
        if self.endpoint_failure != "none":
            on.append(f"endpoint: {self.endpoint_failure}")
        return on


@dataclass
class RateWindows:
    """The sliding windows the limits count in: per API per app (a second and a minute), per
    card and per chat."""

    per_second: dict[str, QpsWindow] = field(default_factory=dict)
    per_minute: dict[str, QpsWindow] = field(default_factory=dict)
    per_card: dict[str, QpsWindow] = field(default_factory=dict)
    per_chat: dict[str, QpsWindow] = field(default_factory=dict)

    def api(self, route: str) -> tuple[QpsWindow, QpsWindow]:
        second = self.per_second.setdefault(route, QpsWindow(1.0))
        minute = self.per_minute.setdefault(route, QpsWindow(60.0))
        return second, minute

    def card(self, card_id: str) -> QpsWindow:
        return self.per_card.setdefault(card_id, QpsWindow(1.0))

    def chat(self, chat_id: str) -> QpsWindow:
        return self.per_chat.setdefault(chat_id, QpsWindow(1.0))


def rate_limited(limit: int, window: QpsWindow) -> FeishuApiError:
    reset = max(1, math.ceil(window.reset_in()))
    return FeishuApiError(
        RATE_LIMITED,
        "request trigger frequency limit",
        status=429,
        headers={
            "x-ogw-ratelimit-limit": str(limit),
            "x-ogw-ratelimit-reset": str(reset),
        },
    )


@dataclass
class Verdict:
    """How imsim answers one API call: wait `delay` seconds, then fail with `error` or serve it."""

    delay: float
    error: FeishuApiError | None
    outcome: str  # ok | rate_limited | cards_down | messages_down | failure_injected


def judge_call(
    config: FaultConfig, windows: RateWindows, rng: FaultRandom, *, route: str, path: str, method: str
) -> Verdict:
    """Outages and rate limits answer at once (they sit in front of the service); calls that get
    through wait the configured latency, then CardKit and IM calls may fail at the failure rate."""
    is_card = path.startswith(CARDKIT_PREFIX)
    is_message = path.startswith(MESSAGES_PREFIX) and method == "POST"
    if is_card and config.cards_down:
        return Verdict(
            0.0, FeishuApiError(SERVICE_UNAVAILABLE, "service unavailable", status=503), "cards_down"
        )
    if is_message and config.messages_down:
        return Verdict(
            0.0, FeishuApiError(SERVICE_UNAVAILABLE, "service unavailable", status=503), "messages_down"
        )
    second, minute = windows.api(route)
    for limit, window in ((config.api_qps_limit, second), (config.api_qpm_limit, minute)):
        if not window.take(limit):
            assert limit is not None  # an unlimited window takes every call
            return Verdict(0.0, rate_limited(limit, window), "rate_limited")
    delay = 0.0
    if config.api_latency_ms or config.api_jitter_ms:
        jitter = rng.latency.uniform(-config.api_jitter_ms, config.api_jitter_ms)
        delay = max(0.0, config.api_latency_ms + jitter) / 1000
    if (is_card or is_message) and config.api_failure_rate and rng.failure.random() < config.api_failure_rate:
        error = FeishuApiError(INTERNAL_ERROR, "internal error, please retry later", status=500)
        return Verdict(delay, error, "failure_injected")
    return Verdict(delay, None, "ok")
