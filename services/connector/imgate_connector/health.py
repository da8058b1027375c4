"""Per-channel health counters, kept by the running channel and published as `ChannelStatus`."""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from imgate_common.messages import ChannelState, ChannelStatus, utcnow
from imgate_connector.metrics import CHANNEL_UP, RECONNECTS


@dataclass
class ChannelHealth:
    channel_id: int
    owner: str
    state: ChannelState = ChannelState.CONNECTING
    connected_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    reconnects: int = 0
    last_inbound_at: datetime | None = None
    messages_in: int = 0
    replies_out: int = 0
    rate_limit_hits: int = 0
    messages_malformed: int = 0
    publish_failures: int = 0
    fallback_replies: int = 0
    # Called when the state changes, so the status store hears of it at once.
    on_change: Callable[[], None] | None = field(default=None, repr=False)
    # Reads how the app's card budget is used now (the reply surface's scheduler sets it).
    card_mode: Callable[[], str] | None = field(default=None, repr=False)

    def connected(self) -> None:
        CHANNEL_UP.labels(str(self.channel_id)).set(1)
        if self.state != ChannelState.CONNECTED:
            self.state = ChannelState.CONNECTED
            self.connected_at = utcnow()
            self._changed()

    def disconnected(self, error: str | None = None) -> None:
        if error:
            self.error(error)
        CHANNEL_UP.labels(str(self.channel_id)).set(0)
        if self.state != ChannelState.DISCONNECTED:
            self.state = ChannelState.DISCONNECTED
            self.connected_at = None
            self._changed()

    def error(self, error: str) -> None:
        self.last_error = error[:500]
        self.last_error_at = utcnow()

    def reconnecting(self) -> None:
        self.reconnects += 1
        RECONNECTS.labels(str(self.channel_id)).inc()

    def retire(self) -> None:
        """The channel stopped running here: its connection gauge goes (another replica's now)."""
        with contextlib.suppress(KeyError):
            CHANNEL_UP.remove(str(self.channel_id))

    def inbound(self) -> None:
        self.messages_in += 1
        self.last_inbound_at = utcnow()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def snapshot(self) -> ChannelStatus:
        return ChannelStatus(
            channel_id=self.channel_id,
            state=self.state,
            owner=self.owner,
            connected_at=self.connected_at,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            reconnects=self.reconnects,
            last_inbound_at=self.last_inbound_at,
            messages_in=self.messages_in,
            replies_out=self.replies_out,
            rate_limit_hits=self.rate_limit_hits,
            messages_malformed=self.messages_malformed,
            publish_failures=self.publish_failures,
            fallback_replies=self.fallback_replies,
            card_mode=self.card_mode() if self.card_mode is not None else None,
        )
